"""The files the VM layer of a Debian image adds of its own: boot config, serial console login, guest network,
cloud-init's settings.

They are copied into the rootfs before the VM packages are installed, so the kernel package's own postinst
already builds the initramfs from this configuration (one mkinitramfs run, not two).
"""

from __future__ import annotations

import hashlib

__all__ = ["GUEST_NET_UNIT", "INITRD_MODULES", "guest_files", "guest_files_digest"]

# Loaded by the initramfs itself, not left to udev: virtio-mmio devices given on the kernel command line
# (QEMU's microvm) carry no modalias for udev to load a driver by. ext4 mounts the root.
INITRD_MODULES = ("virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng", "ext4")
GUEST_NET_UNIT = "virtkit-guest-net.service"

# MODULES=list: the initramfs holds only the modules above (and their dependencies): virtkit's VMs see
# virtio devices only, and under TCG every megabyte of initramfs costs boot time. gzip rather than zstd:
# no extra package in the image, and the builder (and its tests) can read the archive with the stdlib.
_INITRAMFS_CONF = "MODULES=list\nCOMPRESS=gzip\n"

# link_in_boot: /boot/vmlinuz and /boot/initrd.img follow the installed kernel, also after upgrades in the VM.
_KERNEL_IMG_CONF = "do_symlinks = yes\nlink_in_boot = yes\n"

# No fsck (pass 0): each VM writes to its own overlay of the image's disk, ext4's journal recovers a killed
# VM, and under TCG a fsck unit costs seconds of boot.
_FSTAB = "# virtkit VM: the root disk is the first virtio disk\n/dev/vda\t/\text4\trw,errors=remount-ro\t0\t0\n"

# A dev platform's choice: root is logged in on the serial consoles (ttyS0, hvc0) without a password, as
# many cloud dev images do; root's password stays locked, so no other way in takes an empty password.
_AUTOLOGIN = """[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
"""

# virtkit networks run no DHCP server: the engine puts the leased address on the kernel command line
# (virtkit.ip=ADDR/PREFIX, virtkit.gw=, virtkit.dns=, virtkit.hostname=; virtkit.mac= picks the interface
# when there are several). virtio_net is a module, so the kernel's own ip= cannot be used.
_GUEST_NET = r"""#!/bin/sh
# virtkit guest network: applies virtkit.hostname=, virtkit.ip=ADDR/PREFIX, virtkit.gw=, virtkit.dns= and
# virtkit.mac= from the kernel command line. Installed by `virtkit image build debian --vm`.
set -u
param() (
  set -f
  for w in $(cat /proc/cmdline); do
    case "$w" in "virtkit.$1="*) echo "${w#*=}"; break ;; esac
  done
)
name=$(param hostname); addr=$(param ip); gw=$(param gw); dns=$(param dns)
mac=$(param mac | tr 'A-F' 'a-f')
[ -n "$name" ] && echo "$name" >/proc/sys/kernel/hostname
ip link set lo up
if [ -n "$addr" ]; then
  # udev may still be renaming the interface (predictable names): wait for it before choosing one
  command -v udevadm >/dev/null && udevadm settle --timeout=30
  dev=""
  for _ in $(seq 300); do
    for d in /sys/class/net/*; do
      [ "$(cat "$d/type" 2>/dev/null)" = 1 ] || continue
      if [ -z "$mac" ] || [ "$(cat "$d/address")" = "$mac" ]; then dev=${d##*/}; break; fi
    done
    [ -n "$dev" ] && break
    sleep 0.1
  done
  if [ -z "$dev" ]; then
    echo "virtkit-guest-net: no network interface for $addr${mac:+ (mac $mac)}" >&2
    exit 1
  fi
  ip link set "$dev" up
  ip addr replace "$addr" dev "$dev"
  [ -n "$gw" ] && ip route replace default via "$gw" dev "$dev"
fi
[ -n "$dns" ] && echo "nameserver $dns" >/etc/resolv.conf
host=$(cat /proc/sys/kernel/hostname)
{
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n'
  if [ -n "$addr" ]; then printf '%s\t%s\n' "${addr%/*}" "$host"; else printf '127.0.1.1\t%s\n' "$host"; fi
} >/etc/hosts
exit 0
"""

_GUEST_NET_UNIT_TEXT = """[Unit]
Description=virtkit guest network and hostname from the kernel command line
Documentation=file:/usr/lib/virtkit/guest-net
Before=network.target network-online.target
Wants=network.target
After=systemd-udev-trigger.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/virtkit/guest-net

[Install]
WantedBy=multi-user.target network-online.target
"""


# The agent answers only once the guest has its hostname and address: udev starts qemu-guest-agent.service when
# its port appears, and this orders it after the network unit that the boot has queued as well. So "the agent
# answers" means the VM is reachable as virtkit configured it (exec, tests, the template saved at that moment).
_AGENT_AFTER_NET = f"""[Unit]
After={GUEST_NET_UNIT}
"""


# cloud-init reads only the NoCloud seed virtkit attaches (a disk labelled cidata: vm/qemu/seed.py) to VMs given
# guest configuration; a VM without one gets cloud-init=disabled on its kernel command line, so the generator
# turns cloud-init off before ds-identify runs (with one datasource listed, ds-identify does not look: it
# enables it). The network stays virtkit-guest-net's (the kernel command line's), the filesystem is grown on
# the host, keys given with --ssh-key are root's (no default user is made), and no locale is generated (seconds
# under TCG); user-data may still say otherwise.
_CLOUD_CFG = """# virtkit: the NoCloud seed virtkit attaches is the only source of guest configuration
datasource_list: [NoCloud, None]
network: {config: disabled}
disable_root: false
users: []
locale: false
resize_rootfs: false
growpart: {mode: "off"}
ssh_genkeytypes: []
"""


def guest_files() -> dict[str, tuple[str, int]]:
    """Path in the rootfs -> (text, mode)."""
    return {
        "etc/fstab": (_FSTAB, 0o644),
        "etc/kernel-img.conf": (_KERNEL_IMG_CONF, 0o644),
        "etc/initramfs-tools/conf.d/virtkit": (_INITRAMFS_CONF, 0o644),
        # modules.d rather than /etc/initramfs-tools/modules: that one is a conffile of initramfs-tools
        "usr/share/initramfs-tools/modules.d/virtkit": ("".join(m + "\n" for m in INITRD_MODULES), 0o644),
        "etc/systemd/system/serial-getty@.service.d/virtkit-autologin.conf": (_AUTOLOGIN, 0o644),
        "usr/lib/virtkit/guest-net": (_GUEST_NET, 0o755),
        f"etc/systemd/system/{GUEST_NET_UNIT}": (_GUEST_NET_UNIT_TEXT, 0o644),
        "etc/systemd/system/qemu-guest-agent.service.d/virtkit.conf": (_AGENT_AFTER_NET, 0o644),
        "etc/cloud/cloud.cfg.d/90_virtkit.cfg": (_CLOUD_CFG, 0o644),
    }


def guest_files_digest() -> str:
    """Changes whenever a file above does: part of the VM build's cache key."""
    h = hashlib.sha256()
    for path, (text, mode) in sorted(guest_files().items()):
        h.update(f"{path}\0{mode:o}\0{text}\0".encode())
    return h.hexdigest()
