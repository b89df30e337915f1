"""virtio-blk over a raw image file or block device: reads, writes, flushes and the disk's ID string."""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Any

from virtkit.vm.kvm.errors import DeviceError, GuestMemoryError
from virtkit.vm.kvm.virtio import spec as S
from virtkit.vm.kvm.virtio.backend import VirtioBackend
from virtkit.vm.kvm.virtio.queue import Chain, Virtqueue, gather, pieces, scatter

log = logging.getLogger(__name__)

MAX_SEGMENTS = 126          # seg_max: a 128-entry chain less the header and the status descriptors
IO_CHUNK = 1 << 20          # the largest host buffer one read uses, however much the guest asks for
_HEADER = struct.Struct("<IIQ")     # struct virtio_blk_outhdr: type, reserved (ioprio), sector
# struct virtio_blk_config up to num_queues: capacity, size_max, seg_max, geometry (c/h/s), blk_size,
# topology (physical_block_exp, alignment_offset, min_io_size, opt_io_size), writeback, unused0, num_queues
_CONFIG = struct.Struct("<QIIHBBIBBHIBBH")


class BlockBackend(VirtioBackend):
    """A disk: `path` opened read-write (or read-only, then VIRTIO_BLK_F_RO is offered and writes fail)."""

    device_id = S.VIRTIO_ID_BLOCK
    name = "blk"
    num_queues = 1

    def __init__(self, path: str, readonly: bool = False, *, serial: str | None = None) -> None:
        super().__init__()
        try:
            self.fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise DeviceError(f"virtio-blk: cannot open disk {path!r}: {exc.strerror}") from exc
        try:
            size = os.lseek(self.fd, 0, os.SEEK_END)     # fstat says 0 for a block device; lseek does not
            st = os.fstat(self.fd)
        except OSError as exc:
            os.close(self.fd)
            raise DeviceError(f"virtio-blk: cannot size disk {path!r}: {exc.strerror}") from exc
        self.path = path
        self.readonly = readonly
        self.capacity = size // S.SECTOR_SIZE         # a trailing partial sector is not addressable
        ident = serial if serial is not None else f"vk{st.st_dev:x}-{st.st_ino:x}"
        self.serial = ident.encode()[:S.VIRTIO_BLK_ID_BYTES]
        self.features = (1 << S.VIRTIO_BLK_F_SEG_MAX) | (1 << S.VIRTIO_BLK_F_FLUSH)
        if readonly:
            self.features |= 1 << S.VIRTIO_BLK_F_RO
        self.counters.update(reads=0, writes=0, flushes=0, read_bytes=0, write_bytes=0)

    def config(self) -> bytes:
        return _CONFIG.pack(self.capacity, 0, MAX_SEGMENTS, 0, 0, 0, S.SECTOR_SIZE, 0, 0, 0, 0, 0, 0, 0)

    def process(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            try:
                used = self._handle(chain)
            except GuestMemoryError as exc:     # e.g. a "writable" buffer in ROM: this request fails, alone
                self._failed(chain, f"guest memory: {exc}")
                used = 0
            queue.push(chain.head, used)

    def _failed(self, chain: Chain, why: str) -> None:
        self.counters["errors"] += 1
        log.debug("virtio-blk %s: request at descriptor %d failed: %s", self.path, chain.head, why)

    def _handle(self, chain: Chain) -> int:
        """Serve one request; returns the bytes written into the chain (data in, then the status byte)."""
        self.counters["requests"] += 1
        status_at = chain.writable_len - 1      # the status is the chain's last byte, whatever the framing
        if status_at < 0:
            self._failed(chain, chain.error or "no device-writable status byte")
            return 0
        if chain.error:
            return self._finish(chain, S.VIRTIO_BLK_S_IOERR, 0, chain.error)
        if chain.readable_len < _HEADER.size:
            return self._finish(chain, S.VIRTIO_BLK_S_IOERR, 0, "request header shorter than 16 bytes")
        kind, _ioprio, sector = _HEADER.unpack(gather(self.memory, chain.readable, 0, _HEADER.size))
        out_len = chain.readable_len - _HEADER.size
        try:
            status, written, why = self._request(kind, sector, chain, out_len, status_at)
        except OSError as exc:
            status, written, why = S.VIRTIO_BLK_S_IOERR, 0, f"host I/O: {exc}"
        return self._finish(chain, status, written, why)

    def _finish(self, chain: Chain, status: int, written: int, why: str) -> int:
        if status != S.VIRTIO_BLK_S_OK:
            self._failed(chain, why)
        scatter(self.memory, chain.writable, chain.writable_len - 1, bytes([status]))
        return written + 1

    def _request(self, kind: int, sector: int, chain: Chain, out_len: int, in_len: int) -> tuple[int, int, str]:
        """(status, bytes of data written into the chain, why it failed)."""
        ioerr = S.VIRTIO_BLK_S_IOERR
        if kind == S.VIRTIO_BLK_T_IN:
            if out_len:
                return ioerr, 0, "read request carries driver-readable data"
            if problem := self._range_problem(sector, in_len):
                return ioerr, 0, problem
            self._read(chain, sector * S.SECTOR_SIZE, in_len)
            return S.VIRTIO_BLK_S_OK, in_len, ""
        if kind == S.VIRTIO_BLK_T_OUT:
            if in_len:
                return ioerr, 0, "write request carries device-writable data buffers"
            if self.readonly:
                # the spec leaves the status to the device; IOERR is what Linux maps to EIO on a read-only disk
                return ioerr, 0, "write to a read-only disk"
            if problem := self._range_problem(sector, out_len):
                return ioerr, 0, problem
            self._write(chain, sector * S.SECTOR_SIZE, out_len)
            return S.VIRTIO_BLK_S_OK, 0, ""
        if kind == S.VIRTIO_BLK_T_FLUSH:
            self.counters["flushes"] += 1
            os.fdatasync(self.fd)
            return S.VIRTIO_BLK_S_OK, 0, ""
        if kind == S.VIRTIO_BLK_T_GET_ID:
            ident = self.serial.ljust(S.VIRTIO_BLK_ID_BYTES, b"\0")[:in_len]
            return S.VIRTIO_BLK_S_OK, scatter(self.memory, chain.writable, 0, ident), ""
        return S.VIRTIO_BLK_S_UNSUPP, 0, f"request type {kind} is not supported"

    def _range_problem(self, sector: int, length: int) -> str:
        if length % S.SECTOR_SIZE:
            return f"data length {length} is not a multiple of {S.SECTOR_SIZE}"
        if sector * S.SECTOR_SIZE + length > self.capacity * S.SECTOR_SIZE:
            return f"sectors {sector}+{length // S.SECTOR_SIZE} are past the disk's {self.capacity}"
        return ""

    def _read(self, chain: Chain, position: int, length: int) -> None:
        for gpa, n in pieces(chain.writable, 0, length):
            for offset in range(0, n, IO_CHUNK):
                take = min(IO_CHUNK, n - offset)
                data = os.pread(self.fd, take, position)
                if len(data) != take:       # the image shrank under us
                    raise OSError(errno.EIO, f"short read at byte {position}")
                self.memory.write(gpa + offset, data)
                position += take
        self.counters["reads"] += 1
        self.counters["read_bytes"] += length
        self.counters["bytes"] += length

    def _write(self, chain: Chain, position: int, length: int) -> None:
        for gpa, n in pieces(chain.readable, _HEADER.size, length):
            with self.memory.view(gpa, n) as view:
                done = 0
                while done < n:     # pwrite may write less than asked
                    wrote = os.pwrite(self.fd, view[done:done + IO_CHUNK], position + done)
                    if wrote <= 0:
                        raise OSError(errno.EIO, f"no progress writing at byte {position + done}")
                    done += wrote
            position += n
        if not self.ctx or not self.ctx.driver_features & (1 << S.VIRTIO_BLK_F_FLUSH):
            os.fdatasync(self.fd)   # without FLUSH negotiated the disk must be write-through
        self.counters["writes"] += 1
        self.counters["write_bytes"] += length
        self.counters["bytes"] += length

    def save(self) -> dict[str, Any]:
        return {**super().save(), "capacity": self.capacity, "readonly": self.readonly}

    def restore(self, state: dict[str, Any]) -> None:
        if state.get("capacity") != self.capacity or state.get("readonly") != self.readonly:
            raise DeviceError(f"virtio-blk {self.path}: the snapshot saw capacity {state.get('capacity')} "
                              f"(read-only {state.get('readonly')}), the disk now has {self.capacity} "
                              f"(read-only {self.readonly})")
        super().restore(state)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "path": self.path, "capacity": self.capacity, "readonly": self.readonly}

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
