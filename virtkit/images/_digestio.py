"""Streams that hash what passes through them: a layer read once yields its blob digest, its diff_id and its tar.

A layer blob is gzip-compressed or a plain tar. Reading it through LayerReader decompresses (when needed) and
hashes both the stored bytes (the blob digest) and the tar bytes (the diff_id) in the same pass that feeds the
unpacker, so verifying a layer costs no extra read of it.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import IO

from virtkit.core.errors import InvalidArgument

__all__ = ["GZIP_MAGIC", "ZSTD_MAGIC", "LayerReader", "compression_of"]

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


def compression_of(head: bytes, what: str) -> str:
    """'gzip' or 'none' from a blob's first bytes; other compressions are refused, naming `what`."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        raise InvalidArgument(f"{what}: zstd-compressed layers are not supported (use gzip or plain tar)")
    if head.startswith((b"BZh", b"\xfd7zXZ")):
        raise InvalidArgument(f"{what}: bzip2/xz-compressed layers are not supported (use gzip or plain tar)")
    return "none"


class LayerReader:
    """A read-only file object over a layer blob's *tar* bytes, hashing the stored and the tar bytes."""

    def __init__(self, src: IO[bytes] | str | Path, what: str = "layer") -> None:
        self._own = not hasattr(src, "read")
        self._f: IO[bytes] = open(src, "rb") if self._own else src  # type: ignore[assignment,arg-type]  # noqa: SIM115
        self.raw = hashlib.sha256()
        self.plain = hashlib.sha256()
        self.raw_size = 0
        first = self._f.read(_CHUNK)
        self._gzip = compression_of(first, what) == "gzip"
        self._d = zlib.decompressobj(31) if self._gzip else None
        self._buf = b""
        self._pos = 0
        self._eof = False
        self._feed(first)

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            self._eof = True
            if self._d is not None:
                rest = self._d.flush()
                if not self._d.eof:
                    raise InvalidArgument("layer: gzip stream is truncated")
                self._append(rest)
            return
        self.raw.update(chunk)
        self.raw_size += len(chunk)
        if self._d is None:
            self._append(chunk)
            return
        out = [self._d.decompress(chunk)]
        # Concatenated gzip members (pigz, some tools) are one stream: start a new decompressor on the rest.
        while self._d.eof and self._d.unused_data:
            rest = self._d.unused_data
            self._d = zlib.decompressobj(31)
            out.append(self._d.decompress(rest))
        self._append(b"".join(out))

    def _append(self, data: bytes) -> None:
        if not data:
            return
        self.plain.update(data)
        self._buf = self._buf[self._pos:] + data if self._pos < len(self._buf) else data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            while not self._eof:
                self._feed(self._f.read(_CHUNK))
            n = len(self._buf) - self._pos
        while len(self._buf) - self._pos < n and not self._eof:
            self._feed(self._f.read(_CHUNK))
        data = self._buf[self._pos:self._pos + n]
        self._pos += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) to the end: the digests cover the whole blob, tar padding included."""
        while not self._eof:
            self._feed(self._f.read(_CHUNK))
            self._pos = len(self._buf)

    @property
    def digest(self) -> str:
        return "sha256:" + self.raw.hexdigest()

    @property
    def diff_id(self) -> str:
        return "sha256:" + self.plain.hexdigest()

    def close(self) -> None:
        if self._own:
            self._f.close()

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
