"""The VM layer of Debian images (`image build debian --vm`): what a VM needs, as one layer over the plain base.

The base layer(s) are exactly those of `image build debian` with the same inputs (taken from that build's
cache when it is in the store, else built the same way), so both images share their base blobs. Over them, in
an overlay whose upper dir becomes the VM layer, apt installs (from Debian's registry) the cloud kernel
(linux-image-cloud-amd64), initramfs-tools, systemd-sysv, udev, dbus (logind handles the ACPI power button),
qemu-guest-agent, iproute2 and cloud-init (NoCloud only), after _guest_files put in the boot config, the
serial console login, the network unit and cloud-init's settings. The layer is written like the base ones
(sorted, numeric owners, mtimes clamped), files that equal the base's left out, overlay whiteouts as OCI ones.

What the image offers the VM engine, in its config's Labels:
  org.virtkit.vm                  "1": the image boots as a VM
  org.virtkit.vm.kernel           /boot/vmlinuz-<release> (a bzImage; /boot/vmlinuz links to the newest)
  org.virtkit.vm.initrd           /boot/initrd.img-<release> (gzip; loads virtio_pci, virtio_mmio, virtio_blk,
                                  virtio_net, virtio_console, virtio_rng; ext4 is built into the cloud kernel;
                                  /boot/initrd.img links to it)
  org.virtkit.vm.kernel.release   <release>, as `uname -r` in the guest (e.g. 6.1.0-37-cloud-amd64)
  org.virtkit.vm.root             /dev/vda: the root filesystem (ext4, the whole disk; /etc/fstab says so)
  org.virtkit.vm.rootfstype       ext4
  org.virtkit.vm.cmdline          kernel parameters the image expects: root, rw, console=ttyS0
  org.virtkit.vm.console          ttyS0: a getty there (and on hvc0) logs root in without a password
  org.virtkit.vm.agent            org.qemu.guest_agent.0: the virtio-serial port name qemu-ga serves (udev
                                  starts qemu-guest-agent.service when the port appears, ordered after the
                                  network unit: an answering agent means hostname and address are set)
  org.virtkit.vm.params           the kernel parameters virtkit-guest-net.service applies at boot:
                                  virtkit.hostname=, virtkit.ip=ADDR/PREFIX, virtkit.gw=, virtkit.dns=, virtkit.mac=
  org.virtkit.vm.cloudinit        nocloud: cloud-init reads a NoCloud seed (a disk labelled cidata) when the VM
                                  has one, and is off when its kernel command line says cloud-init=disabled
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import stat
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

from virtkit.core.errors import IntegrityError, SystemFailure, VirtkitError

from ._digestio import LayerReader
from ._guest_files import GUEST_NET_UNIT, guest_files, guest_files_digest
from .debian import (
    _add,
    _doc_epoch,
    _rfc3339,
    _sorted_walk,
    base_config,
    build_base,
    cached_manifest,
    input_key,
    normalise,
    run_streamed,
)
from .store import ImageInfo, ImageStore

__all__ = ["REQUIRED_INITRD_MODULES", "VM_PACKAGES", "build_vm_image", "initrd_entries", "initrd_modules",
           "vm_inputs", "vm_labels"]

VM_LAYER_VERSION = 1
VM_PACKAGES = ("cloud-init", "dbus", "initramfs-tools", "iproute2", "linux-image-cloud-amd64", "qemu-guest-agent",
               "systemd-sysv", "udev")
REQUIRED_INITRD_MODULES = ("virtio_blk", "virtio_console", "virtio_mmio", "virtio_net", "virtio_pci", "ext4")
GUEST_PARAMS = ("virtkit.hostname", "virtkit.ip", "virtkit.gw", "virtkit.dns", "virtkit.mac")
_WHITEOUT_PREFIX = ".wh."
_OPAQUE_MARKER = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"
# What overlayfs writes only with redirect_dir / metacopy on (we mount with both off): a tar cannot say it.
_UNREPRESENTABLE = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

# Runs in private mount and pid namespaces (see _mmdebstrap): every mount goes away with it, even on a crash.
# /run and /tmp are tmpfs and resolv.conf a bind mount, so none of them lands in the upper dir.
_STAGE = r"""set -eu
lower=$1 upper=$2 ovl=$3 root=$4 files=$5 sde=$6
shift 6
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$ovl,redirect_dir=off,index=off,metacopy=off" \
  "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mkdir -p "$root/run/lock"
mount -t tmpfs tmpfs "$root/tmp"
[ -e /etc/resolv.conf ] && mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
umask 022
cp -R "$files/." "$root/"
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"   # no service starts in the chroot
chmod 755 "$root/usr/sbin/policy-rc.d"
in_root() {
  chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C \
    DEBIAN_FRONTEND=noninteractive SOURCE_DATE_EPOCH="$sde" $PROXIES "$@"
}
echo "virtkit: apt-get update"
in_root apt-get -q -o Dpkg::Use-Pty=0 update
echo "virtkit: apt-get install $*"
in_root apt-get -q -y -o Dpkg::Use-Pty=0 install --no-install-recommends "$@"
in_root systemctl enable @UNIT@
# an empty machine-id makes every boot a first boot: never wait for answers on the console
in_root systemctl mask systemd-firstboot.service
in_root apt-get clean
rm -f "$root/usr/sbin/policy-rc.d"
"""


def vm_inputs() -> dict:
    """What the VM layer depends on besides the base's inputs: part of the --vm build's cache key."""
    return {"version": VM_LAYER_VERSION, "packages": list(VM_PACKAGES), "files": guest_files_digest()}


def vm_labels(kernel_release: str) -> dict[str, str]:
    return {
        "org.virtkit.vm": "1",
        "org.virtkit.vm.kernel": f"/boot/vmlinuz-{kernel_release}",
        "org.virtkit.vm.initrd": f"/boot/initrd.img-{kernel_release}",
        "org.virtkit.vm.kernel.release": kernel_release,
        "org.virtkit.vm.root": "/dev/vda",
        "org.virtkit.vm.rootfstype": "ext4",
        "org.virtkit.vm.cmdline": "root=/dev/vda rootfstype=ext4 rw console=ttyS0",
        "org.virtkit.vm.console": "ttyS0",
        "org.virtkit.vm.agent": "org.qemu.guest_agent.0",
        "org.virtkit.vm.params": " ".join(GUEST_PARAMS),
        "org.virtkit.vm.cloudinit": "nocloud",
    }


def build_vm_image(store: ImageStore, name: str, work: Path, base_doc: dict, no_cache: bool,
                   say: Callable[[str], None]) -> ImageInfo:
    """The base layers (cached or built) plus the VM layer, stored as image `name`. `work` is a private
    temp dir that the caller removes."""
    base = None if no_cache else _cached_base(store, base_doc, work, say)
    if base is None:
        tars, epoch, rootfs = build_base(work, base_doc, say, keep_rootfs=True)
        _clamp_mtimes(rootfs, epoch)   # the lower must look like the unpacked base tar, as a cached base does
        lowers = [rootfs]
    else:
        tars, epoch, lowers = base
    layer, kernel_release, vm_epoch = build_vm_layer(lowers, work, base_doc.get("epoch"), epoch, say)
    config = base_config(base_doc, epoch, len(tars))
    created = _rfc3339(vm_epoch)
    config["created"] = created
    config["config"]["Labels"] = vm_labels(kernel_release)
    config["history"].append({"created": created, "created_by": "virtkit build debian --vm: "
                              f"{' '.join(VM_PACKAGES)} (kernel {kernel_release}), layer {len(tars) + 1}"
                              f"/{len(tars) + 1}"})
    for lower in lowers:
        shutil.rmtree(lower, ignore_errors=True)
    say(f"compressing and storing image {name}")
    return store.add_image(name, [*tars, layer], config)


def _cached_base(store: ImageStore, base_doc: dict, work: Path,
                 say: Callable[[str], None]) -> tuple[list[str | Path], int, list[Path]] | None:
    """The plain build's layers from the store, as tars and unpacked dirs; None when not (fully) there."""
    from .unpack import unpack_layer

    digest = cached_manifest(store.cache / "debian" / f"{input_key(base_doc)}.json")
    if digest is None:
        return None
    tars: list[str | Path] = []
    lowers: list[Path] = []
    try:
        manifest = json.loads(store.read_blob(digest))
        config = json.loads(store.read_blob(manifest["config"]["digest"]))
        import datetime as dt

        epoch = int(dt.datetime.fromisoformat(config["created"].replace("Z", "+00:00")).timestamp())
        for i, (desc, diff_id) in enumerate(zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True)):
            tar = work / f"base{i}.tar"
            _decompress(store.blobs / desc["digest"].removeprefix("sha256:"), tar, desc["digest"], diff_id)
            tars.append(tar)
            lowers.append(work / f"lower{i}")
            unpack_layer(tar, lowers[-1], lowers[:-1])
    except (VirtkitError, OSError, KeyError, TypeError, ValueError) as exc:
        # e.g. the plain image was removed and its blobs collected meanwhile: build the base instead
        say(f"the cached base build {digest[7:19]} is not usable ({exc}); building the base")
        for lower in lowers:
            shutil.rmtree(lower, ignore_errors=True)
        for done in tars:
            Path(done).unlink(missing_ok=True)
        return None
    say(f"using the cached base layers of {base_doc['release']} ({digest[7:19]})")
    return tars, epoch, lowers


def _decompress(blob: Path, out: Path, digest: str, diff_id: str) -> None:
    with LayerReader(blob, f"blob {digest}") as reader, open(out, "wb") as f:
        while chunk := reader.read(1 << 20):
            f.write(chunk)
        reader.drain()
        if (reader.digest, reader.diff_id) != (digest, diff_id):
            raise IntegrityError(f"blob {digest}: content does not match its digest or diff_id")


def _clamp_mtimes(root: Path, epoch: int) -> None:
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(dirpath, n)
            if os.lstat(p).st_mtime > epoch:
                os.utime(p, (epoch, epoch), follow_symlinks=False)
    if os.lstat(root).st_mtime > epoch:
        os.utime(root, (epoch, epoch))


def build_vm_layer(lowers: list[Path], work: Path, epoch_env: str | None, base_epoch: int,
                   say: Callable[[str], None]) -> tuple[Path, str, int]:
    """Install the VM packages over `lowers` (lowest first); (layer tar, kernel release, layer epoch)."""
    upper, ovl, root, files = (work / n for n in ("vm-upper", "vm-ovl", "vm-root", "vm-files"))
    for d in (upper, ovl, root):
        d.mkdir()
    for rel, (text, mode) in guest_files().items():
        path = files / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, mode)
    say(f"installing the VM packages over the base: {', '.join(VM_PACKAGES)}")
    script = _STAGE.replace("@UNIT@", GUEST_NET_UNIT)
    proxies = " ".join(f"{k}={v}" for k in _PROXY_VARS if (v := os.environ.get(k)) and not {" ", "'"} & set(v))
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL",
            "sh", "-c", f"PROXIES='{proxies}'\n{script}", "virtkit-vm-stage",
            ":".join(str(p) for p in reversed(lowers)), str(upper), str(ovl), str(root), str(files),
            str(base_epoch), *VM_PACKAGES]
    _run_streamed(argv, say)
    shutil.rmtree(ovl, ignore_errors=True)
    normalise(upper, base_epoch)   # lower files are never removed by it: the base was normalised already
    epoch = int(epoch_env) if epoch_env and epoch_env.isdigit() else max(base_epoch, _doc_epoch(upper))
    kernel_release = _check_boot(upper)
    say(f"writing the VM layer (kernel {kernel_release})")
    out = work / "vm-layer.tar"
    write_upper_layer(upper, lowers, out, epoch)
    shutil.rmtree(upper, ignore_errors=True)
    return out, kernel_release, epoch


def _run_streamed(argv: list[str], say: Callable[[str], None]) -> None:
    rc, text = run_streamed(argv, say)
    if rc != 0:
        raise SystemFailure(f"installing the VM packages failed (exit {rc}): {text[-1500:]}")


def _check_boot(upper: Path) -> str:
    """The installed kernel's release, after checking the kernel, the initrd, their links and its modules."""
    boot = upper / "boot"
    kernels = sorted(p.name.removeprefix("vmlinuz-") for p in boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise SystemFailure(f"VM layer: expected one kernel in /boot, found {kernels or 'none'}")
    release = kernels[0]
    initrd = boot / f"initrd.img-{release}"
    if not initrd.is_file():
        raise SystemFailure(f"VM layer: the kernel package made no initramfs (/boot/initrd.img-{release})")
    for link, target in (("vmlinuz", f"vmlinuz-{release}"), ("initrd.img", f"initrd.img-{release}")):
        if not (boot / link).is_symlink() or os.readlink(boot / link) != target:
            raise SystemFailure(f"VM layer: /boot/{link} does not link to {target}")
    missing = set(REQUIRED_INITRD_MODULES) - initrd_modules(initrd)
    if missing:
        raise SystemFailure(f"VM layer: the initramfs lacks the modules {', '.join(sorted(missing))}")
    return release


def write_upper_layer(upper: Path, lowers: list[Path], out: Path, epoch: int) -> None:
    """The overlay upper dir `upper` as a deterministic OCI layer tar (see debian.write_layers), leaving out
    files and symlinks equal to what `lowers` (lowest first) show at the same path."""
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for rel in _sorted_walk(upper):
            full = upper / rel
            st = os.lstat(full)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:     # overlayfs whiteout
                head, _, base = rel.rpartition("/")
                ti = tarfile.TarInfo(f"{head}/{_WHITEOUT_PREFIX}{base}" if head else _WHITEOUT_PREFIX + base)
                ti.mtime, ti.mode = epoch, 0o600
                tf.addfile(ti)
                continue
            xattrs = set(os.listxattr(full, follow_symlinks=False))
            if bad := xattrs.intersection(_UNREPRESENTABLE):
                raise SystemFailure(f"VM layer: {rel!r} carries {', '.join(bad)}, which a layer cannot express")
            if (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)) and _same_as_lower(full, st, rel, lowers):
                continue
            _add(tf, upper, rel, epoch)
            # overlayfs marks new directories opaque too; only one that hides a lower directory says anything
            if stat.S_ISDIR(st.st_mode) and _OPAQUE_XATTR in xattrs and _lower_dir(rel, lowers) and \
                    os.getxattr(full, _OPAQUE_XATTR, follow_symlinks=False) == b"y":
                marker = tarfile.TarInfo(f"{rel}/{_OPAQUE_MARKER}")
                marker.mtime, marker.mode = epoch, 0o600
                tf.addfile(marker)


def _same_as_lower(full: Path, st: os.stat_result, rel: str, lowers: list[Path]) -> bool:
    # The lowers are the builder's own base layers, which hold no whiteouts or opaque dirs: the topmost
    # lower that has the path is what the merged view shows there.
    for lower in reversed(lowers):
        other = lower / rel
        try:
            lst = os.lstat(other)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if (lst.st_mode, lst.st_uid, lst.st_gid) != (st.st_mode, st.st_uid, st.st_gid):
            return False
        if stat.S_ISLNK(st.st_mode):
            return os.readlink(full) == os.readlink(other)
        return (lst.st_size == st.st_size and _capability(full) == _capability(other)
                and filecmp.cmp(full, other, shallow=False))
    return False


def _lower_dir(rel: str, lowers: list[Path]) -> bool:
    return any((lower / rel).is_dir() and not (lower / rel).is_symlink() for lower in lowers)


def _capability(path: Path) -> bytes | None:
    try:
        return os.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return None


def initrd_modules(path: Path) -> set[str]:
    """The kernel modules (virtio_blk, ...) the initramfs at `path` offers: its .ko files and the modules
    its modules.builtin names (the cloud kernel has ext4 built in)."""
    mods = set()
    for name, data in initrd_entries(path):
        base = name.rpartition("/")[2]
        if name.startswith(("lib/modules/", "usr/lib/modules/")):
            if ".ko" in base:
                mods.add(base.split(".ko", 1)[0].replace("-", "_"))
            elif base == "modules.builtin":
                mods.update(line.rpartition("/")[2].split(".ko", 1)[0].replace("-", "_")
                            for line in data.decode("utf-8", "replace").split())
    return mods


def initrd_entries(path: Path) -> list[tuple[str, bytes]]:
    """(path, content) of each entry of an initramfs: newc cpio archives, concatenated, each plain, gzip or
    (with the zstd command) zstd compressed, as mkinitramfs writes them (an early uncompressed cpio, then the
    main one)."""
    data = path.read_bytes()
    entries: list[tuple[str, bytes]] = []
    pos = 0
    while pos < len(data):
        if data[pos] == 0:                          # padding between archives
            pos += 1
        elif data.startswith((b"070701", b"070702"), pos):
            pos = _cpio_entries(data, pos, entries)
        elif data.startswith(b"\x1f\x8b", pos):
            data, pos = zlib.decompressobj(31).decompress(data[pos:]), 0
        elif data.startswith(b"\x28\xb5\x2f\xfd", pos):
            try:
                data = subprocess.run(["zstd", "-dc"], input=data[pos:], capture_output=True, check=True).stdout
            except (OSError, subprocess.CalledProcessError) as exc:
                raise SystemFailure(f"{path}: cannot decompress its zstd archive: {exc}") from exc
            pos = 0
        else:
            raise SystemFailure(f"{path}: not an initramfs (unknown data at offset {pos})")
    return entries


def _cpio_entries(data: bytes, pos: int, entries: list[tuple[str, bytes]]) -> int:
    """Append the entries of the newc archive at `pos`; return the offset after its trailer."""
    while True:
        hdr = data[pos:pos + 110]
        if len(hdr) < 110 or hdr[:5] != b"07070":
            raise SystemFailure(f"initramfs: bad cpio header at offset {pos}")
        size, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode("utf-8", "replace")
        pos += (110 + namesize + 3) & ~3
        body = data[pos:pos + size]
        pos += (size + 3) & ~3
        if name == "TRAILER!!!":
            return pos
        entries.append((name.removeprefix("./"), body))
