"""Streams that hash what passes through them: a layer read once yields its blob digest, its diff_id and its tar.

A layer blob is a plain tar, or gzip- or zstd-compressed. Reading it through LayerReader decompresses (when
needed) and hashes both the stored bytes (the blob digest) and the tar bytes (the diff_id) in the same pass that
feeds the unpacker, so verifying a layer costs no extra read of it. A broken compressed stream (corrupt, or
truncated) is an InvalidArgument naming the layer.
"""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path
from typing import IO, Protocol

from virtkit.core.errors import InvalidArgument

__all__ = ["GZIP_MAGIC", "ZSTD_MAGIC", "LayerReader", "compression_of"]

# the OCI layer media type of each compression compression_of names
LAYER_MEDIA = {"none": "application/vnd.oci.image.layer.v1.tar",
               "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd"}

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 20


def compression_of(head: bytes, what: str) -> str:
    """'gzip', 'zstd' or 'none' from a blob's first bytes; other compressions are refused, naming `what`."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC) or (head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50):
        return "zstd"     # a zstd frame, or a skippable frame (metadata some zstd writers put first)
    if head.startswith((b"BZh", b"\xfd7zXZ")):
        raise InvalidArgument(f"{what}: bzip2/xz-compressed layers are not supported (use gzip, zstd or plain tar)")
    return "none"


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


def _decompressor(kind: str) -> _Decompressor:
    """A decoder of one gzip member or one zstd frame; concatenated ones each get a new decoder."""
    if kind == "gzip":
        return zlib.decompressobj(31)
    import zstandard  # only zstd layers pay for its import

    return zstandard.ZstdDecompressor().decompressobj()  # type: ignore[no-any-return]


def _stream_errors(kind: str) -> tuple[type[Exception], ...]:
    if kind == "gzip":
        return (zlib.error,)
    import zstandard

    return (zstandard.ZstdError,)


class LayerReader:
    """A read-only file object over a layer blob's *tar* bytes, hashing the stored and the tar bytes."""

    def __init__(self, src: IO[bytes] | str | Path, what: str = "layer") -> None:
        self._own = not hasattr(src, "read")
        self._f: IO[bytes] = open(src, "rb") if self._own else src  # type: ignore[assignment,arg-type]  # noqa: SIM115
        self.raw = hashlib.sha256()
        self.plain = hashlib.sha256()
        self.raw_size = 0
        self.what = what
        self._buf = b""
        self._pos = 0
        self._eof = False
        try:
            first = self._f.read(_CHUNK)
            self.compression = compression_of(first, what)
            self._d = None if self.compression == "none" else _decompressor(self.compression)
            self._feed(first)
        except BaseException:
            self.close()
            raise

    def _feed(self, chunk: bytes) -> None:
        if not chunk:
            self._eof = True
            if self._d is not None and not self._d.eof:
                raise InvalidArgument(f"{self.what}: {self.compression} stream is truncated")
            return
        self.raw.update(chunk)
        self.raw_size += len(chunk)
        if self._d is None:
            self._append(chunk)
            return
        try:
            self._append(self._decompress(chunk))
        except _stream_errors(self.compression) as exc:
            raise InvalidArgument(f"{self.what}: corrupt {self.compression} stream: {exc}") from exc

    def _decompress(self, chunk: bytes) -> bytes:
        assert self._d is not None
        if self._d.eof:            # the previous member/frame ended exactly at the end of the last chunk
            self._d = _decompressor(self.compression)
        out = [self._d.decompress(chunk)]
        # Concatenated gzip members (pigz) or zstd frames (multi-threaded zstd) are one stream: start a new
        # decoder on the rest.
        while self._d.eof and self._d.unused_data:
            rest = self._d.unused_data
            self._d = _decompressor(self.compression)
            out.append(self._d.decompress(rest))
        return b"".join(out)

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
