"""Extracting the ELF vmlinux from a bzImage (for the PVH entry: no in-guest decompression), in Python."""

from __future__ import annotations

import bz2
import lzma
import struct

from virtkit.core.errors import InvalidArgument, Unsupported

ELF_MAGIC = b"\x7fELF"
LZ4_LEGACY_MAGIC = 0x184C2102


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def is_bzimage(data: bytes) -> bool:
    return len(data) > 0x250 and data[0x202:0x206] == b"HdrS"


def has_pvh_note(elf: bytes) -> bool:
    """True when the ELF carries XEN_ELFNOTE_PHYS32_ENTRY (type 18, owner "Xen"): QEMU can enter it directly."""
    if not is_elf(elf) or elf[4] != 2:          # 64-bit ELF only
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _flags, off, _va, _pa, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if ptype != 4:                               # PT_NOTE
            continue
        pos, end = off, off + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == 18:
                return True
            pos += 12 + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return False


def lz4_block(src: bytes | memoryview, out: bytearray) -> None:
    """Decode one raw LZ4 block, appending to `out` (matches may reach back into earlier blocks)."""
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        if lit:
            out += src[i:i + lit]
            i += lit
        if i >= n:                                  # the last sequence has literals only
            break
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        mlen = token & 15
        if mlen == 15:
            while True:
                b = src[i]
                i += 1
                mlen += b
                if b != 255:
                    break
        mlen += 4
        if offset == 0 or offset > len(out):
            raise ValueError("corrupt LZ4 block: bad match offset")
        start = len(out) - offset
        if offset >= mlen:
            out += out[start:start + mlen]
        else:                                       # overlapping copy: a repeating pattern
            pattern = bytes(out[start:])
            reps, rest = divmod(mlen, offset)
            out += pattern * reps + pattern[:rest]


def lz4_legacy(data: bytes, expected: int | None) -> bytes:
    """The kernel's LZ4 format: legacy frame (magic, then size-prefixed blocks), 4-byte size appended."""
    if struct.unpack_from("<I", data, 0)[0] != LZ4_LEGACY_MAGIC:
        raise ValueError("not an LZ4 legacy stream")
    out = bytearray()
    mv = memoryview(data)
    pos = 4
    while pos + 4 <= len(data):
        if expected is not None and len(out) >= expected:
            break
        csize, = struct.unpack_from("<I", data, pos)
        if csize == LZ4_LEGACY_MAGIC:              # concatenated streams
            pos += 4
            continue
        pos += 4
        if pos + csize > len(data):
            break
        lz4_block(mv[pos:pos + csize], out)
        pos += csize
    return bytes(out)


def _decompress(payload: bytes) -> bytes:
    tail_size = struct.unpack_from("<I", payload, len(payload) - 4)[0]
    if payload[:2] in (b"\x1f\x8b", b"\x1f\x9e"):
        return _gunzip(payload)
    if payload[:6] == b"\xfd7zXZ\x00":
        return lzma.decompress(payload[:-4], format=lzma.FORMAT_XZ)
    if payload[:3] == b"BZh":
        return bz2.decompress(payload[:-4])
    if payload[:3] == b"\x5d\x00\x00":
        return lzma.decompress(payload[:-4], format=lzma.FORMAT_ALONE)
    if payload[:4] == struct.pack("<I", LZ4_LEGACY_MAGIC):
        return lz4_legacy(payload, tail_size)
    if payload[:4] == b"\x28\xb5\x2f\xfd":
        raise Unsupported("kernel: zstd-compressed bzImage; give the ELF vmlinux instead")
    raise InvalidArgument("kernel: unknown compression in the bzImage payload")


def _gunzip(payload: bytes) -> bytes:
    import zlib

    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside a bzImage: the payload the boot header points at, decompressed."""
    if not is_bzimage(bzimage):
        raise InvalidArgument("kernel: not a bzImage (no 'HdrS' boot header)")
    setup_sects = bzimage[0x1F1] or 4
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start:start + payload_length]
    if len(payload) != payload_length or payload_length < 8:
        raise InvalidArgument("kernel: truncated bzImage payload")
    try:
        elf = _decompress(payload)
    except (ValueError, IndexError, OSError, lzma.LZMAError) as exc:
        raise InvalidArgument(f"kernel: cannot decompress the bzImage payload: {exc}") from exc
    if not is_elf(elf):
        raise InvalidArgument("kernel: the bzImage payload is not an ELF vmlinux")
    return elf
