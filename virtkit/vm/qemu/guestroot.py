"""The guest side of a VM's disks: the script the initramfs /init sources to mount them, and its kernel parameters.

The root disk (virtio-blk, serial ROOT_SERIAL) holds the image's rootfs as ext4; it is mounted on NEWROOT with
proc, sys and dev, the network files /init wrote (hosts, resolv.conf) bound over the image's, and the volume
disks (serials VOLUME_SERIAL % i) on their targets. /init then runs the command chrooted there ($chroot), while
/init itself, the power-button handler and the guest agent stay in the initramfs: they outlive the command and
need nothing from the image. A kernel without virtio-blk or ext4 (a user's --kernel) finds no disk: the command
then runs in the initramfs, and the console says so.

Disks are found by serial, not by name: virtio-mmio probe order decides vda/vdb. Debian's cloud kernel has ext4
built in (CONFIG_EXT4_FS=y, with jbd2, mbcache and crc32c); virtio_blk is among the modules /init loads. ext4
is mounted with noinit_itable: the base disk's unused inode tables are left uninitialised (sparse), and zeroing
them in the background would cost CPU under TCG and grow the overlay for nothing.
"""

from __future__ import annotations

from base64 import b64encode

ROOT_SERIAL = "virtkit-root"
VOLUME_SERIAL = "virtkit-vol%d"
NEWROOT = "/newroot"
SCRIPT_PATH = "lib/virtkit/disks.sh"          # in the initramfs

DISKS_SH = r"""# sourced by /init: mount the root disk and volume disks (see virtkit/vm/qemu/guestroot.py); sets $chroot
chroot=
vk_root=$(sed -n 's/.*virtkit.root=\([^ ]*\).*/\1/p' /proc/cmdline)
vk_dev() {
  for s in /sys/block/vd*/serial; do
    if [ "$(cat "$s" 2>/dev/null)" = "$1" ]; then d=${s%/serial}; echo "/dev/${d##*/}"; return 0; fi
  done
  return 1
}
vk_wait() {
  n=0
  while ! vk_dev "$1"; do n=$((n+1)); [ $n -gt 150 ] && return 1; sleep 0.02; done
}
if [ -n "$vk_root" ]; then
  if dev=$(vk_wait "$vk_root") && mkdir -p @NEWROOT@ && mount -t ext4 -o noinit_itable "$dev" @NEWROOT@; then
    for d in proc sys dev etc; do [ -d @NEWROOT@/$d ] || mkdir -p @NEWROOT@/$d; done
    mount -t proc proc @NEWROOT@/proc
    mount -o rbind /sys @NEWROOT@/sys
    mount -o rbind /dev @NEWROOT@/dev
    for f in hosts resolv.conf; do
      [ -f /etc/$f ] || continue
      [ -f @NEWROOT@/etc/$f ] && [ ! -L @NEWROOT@/etc/$f ] || { rm -f @NEWROOT@/etc/$f; : >@NEWROOT@/etc/$f; }
      mount -o bind /etc/$f @NEWROOT@/etc/$f
    done
    sed -n 's/.*virtkit.vols=\([^ ]*\).*/\1/p' /proc/cmdline | base64 -d | while read -r serial mode target; do
      [ -n "$serial" ] || continue
      opts=noinit_itable; [ "$mode" = ro ] && opts=ro,noload
      vdev=$(vk_wait "$serial") && mkdir -p "@NEWROOT@$target" && mount -t ext4 -o $opts "$vdev" "@NEWROOT@$target" \
        || echo "virtkit: cannot mount volume disk $serial on $target" >/dev/console
    done
    # /init runs "$chroot /bin/sh": by path, as busybox's chroot runs a bare "sh" as its own applet
    # (prefer-applets), not the image's shell
    chroot="chroot @NEWROOT@"
  else
    echo "virtkit: root disk $vk_root not found or not mountable: the command runs in the initramfs" >/dev/console
  fi
fi
""".replace("@NEWROOT@", NEWROOT)


def kernel_params(volumes: list[tuple[str, str, bool]]) -> list[str]:
    """The parameters that tell /init about the disks: [(serial, guest path, read-only), ...] for volumes."""
    params = [f"virtkit.root={ROOT_SERIAL}"]
    if volumes:
        lines = "".join(f"{serial} {'ro' if ro else 'rw'} {target}\n" for serial, target, ro in volumes)
        params.append("virtkit.vols=" + b64encode(lines.encode()).decode())
    return params
