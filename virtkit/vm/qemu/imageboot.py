"""Booting a VM image's own system (`image build debian --vm`): its labels, its kernel and initramfs, its cmdline.

An image whose config Labels say org.virtkit.vm=1 carries what it boots (see virtkit/images/debian_vm.py):
the kernel (a bzImage) and the initramfs at the paths org.virtkit.vm.kernel / .initrd name, the kernel
parameters it expects (org.virtkit.vm.cmdline: root=/dev/vda ...), the guest agent's virtio-serial port name
(org.virtkit.vm.agent), the parameters its network unit reads (org.virtkit.vm.params) and whether its
cloud-init reads a NoCloud seed (org.virtkit.vm.cloudinit=nocloud: vm/qemu/seed.py). Such a VM boots the
image's init (systemd), not virtkit's busybox initramfs, and runs no command of its own: it is reached by
`exec` (qemu-guest-agent) and `console`.

Boot files are made once per image digest, beside its base disk ($VIRTKIT_HOME/vmdisks/<hex>.vmlinux and
<hex>.initrd): the ELF vmlinux extracted from the bzImage (microvm enters it through its PVH note: no
decompression in the guest) and the initramfs with its gzip parts decompressed (the guest's unpacker reads
plain cpio at once; under TCG, gunzip in the guest costs ~0.5 s of boot).
"""

from __future__ import annotations

import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virtkit.core.errors import InvalidArgument, SystemFailure
from virtkit.vm.qemu.vmlinux import extract_vmlinux, has_pvh_note, is_elf

LABEL = "org.virtkit.vm"


@dataclass(frozen=True)
class ImageBoot:
    kernel: str              # path inside the image
    initrd: str
    cmdline: tuple[str, ...]
    agent_port: str
    params: frozenset[str]   # the virtkit.* parameters the image's network unit reads
    cloud_init: bool = False  # it runs cloud-init, which reads a NoCloud seed (org.virtkit.vm.cloudinit=nocloud)


def image_boot(config: dict[str, Any] | None) -> ImageBoot | None:
    """What a system image says it boots; None for an image that is not one (busybox, a plain debian)."""
    labels = ((config or {}).get("config") or {}).get("Labels") or {}
    if labels.get(LABEL) != "1":
        return None
    try:
        kernel, initrd = labels[f"{LABEL}.kernel"], labels[f"{LABEL}.initrd"]
    except KeyError as exc:
        raise InvalidArgument(f"image: says it boots as a VM but names no {exc.args[0]}") from None
    for what in (kernel, initrd):
        if not what.startswith("/") or ".." in what.split("/"):
            raise InvalidArgument(f"image: its VM boot file {what!r} is not an absolute path inside the image")
    return ImageBoot(kernel, initrd, tuple(labels.get(f"{LABEL}.cmdline", "").split()),
                     labels.get(f"{LABEL}.agent") or "org.qemu.guest_agent.0",
                     frozenset(labels.get(f"{LABEL}.params", "").split()),
                     labels.get(f"{LABEL}.cloudinit") == "nocloud")


def _find(layers: list[Path], path: str) -> Path:
    """The file at `path` as the merged image shows it: the top-most layer that has it (no symlinks followed)."""
    rel = path.lstrip("/")
    for layer in reversed(layers):
        p = layer / rel
        if p.is_file() and not p.is_symlink():
            return p
    raise InvalidArgument(f"image: its VM boot file {path} is not in the image")


def plain_initrd(data: bytes) -> bytes:
    """The initramfs with each gzip member decompressed: concatenated newc archives, as the kernel reads them."""
    out = bytearray()
    pos = 0
    while pos < len(data):
        if data.startswith(b"\x1f\x8b", pos):
            d = zlib.decompressobj(31)
            out += d.decompress(data[pos:])
            rest = d.unused_data
            pos = len(data) - len(rest)
            while rest.startswith(b"\x1f\x8b"):            # several members in a row
                d = zlib.decompressobj(31)
                out += d.decompress(rest)
                rest = d.unused_data
                pos = len(data) - len(rest)
            continue
        nxt = data.find(b"\x1f\x8b", pos)
        if nxt < 0:
            out += data[pos:]
            break
        # an uncompressed archive up to its trailer: never look for gzip magic inside file contents
        end = _cpio_end(data, pos)
        out += data[pos:end]
        pos = end
    return bytes(out)


def _cpio_end(data: bytes, pos: int) -> int:
    """The offset after the newc archive at `pos` (and the zero padding after it)."""
    while True:
        if data[pos:pos + 6] not in (b"070701", b"070702"):
            if data[pos:pos + 1] == b"\0":
                pos += 1
                continue
            return pos
        hdr = data[pos:pos + 110]
        if len(hdr) < 110:
            raise SystemFailure("image initramfs: a truncated cpio header")
        size, namesize = int(hdr[54:62], 16), int(hdr[94:102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1]
        pos += (110 + namesize + 3) & ~3
        pos += (size + 3) & ~3
        if name == b"TRAILER!!!":
            while data[pos:pos + 1] == b"\0":
                pos += 1
            return pos


def boot_files(root: str, digest: str, layers: list[Path], boot: ImageBoot) -> tuple[str, str]:
    """(vmlinux, initrd) of the image with manifest `digest`, made once under `root` (atomic renames: VMs of
    the same image created side by side may both make them; either result is the same)."""
    hexd = digest.split(":", 1)[-1]
    vmlinux, initrd = os.path.join(root, f"{hexd}.vmlinux"), os.path.join(root, f"{hexd}.initrd")
    if os.path.exists(vmlinux) and os.path.exists(initrd):
        return vmlinux, initrd
    os.makedirs(root, mode=0o700, exist_ok=True)
    kernel = _find(layers, boot.kernel).read_bytes()
    elf = kernel if is_elf(kernel) else extract_vmlinux(kernel)
    if not has_pvh_note(elf):
        raise InvalidArgument(f"image: its kernel {boot.kernel} has no PVH entry (QEMU's microvm cannot boot it)")
    _write_atomic(vmlinux, elf, root)
    _write_atomic(initrd, plain_initrd(_find(layers, boot.initrd).read_bytes()), root)
    return vmlinux, initrd


def _write_atomic(path: str, data: bytes, root: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".tmp-{os.getpid()}-boot-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o444)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
