"""Guest memory: host mappings, the KVM slots that back them, bounds-checked guest-physical access, dirty log."""

from __future__ import annotations

import ctypes as C
import mmap
import os
import struct

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.errors import ConfigError, GuestMemoryError
from virtkit.vm.kvm.kvm import Vm
from virtkit.vm.kvm.layout import E820_RAM, E820_RESERVED, EBDA_START, HIGH_MEMORY, MMIO_HOLE_END, MMIO_HOLE_START, PAGE

MIN_MEMORY = 2 * 1024 * 1024


class Region:
    """One contiguous stretch of guest-physical memory backed by one host mapping and one KVM slot."""

    # a plain class, not a dataclass: importing dataclasses costs virtkit-vmm ~7 ms of its start
    __slots__ = ("gpa", "size", "slot", "readonly", "fd", "mapping", "host_addr", "view")

    def __init__(self, gpa: int, size: int, slot: int, readonly: bool, fd: int, mapping: mmap.mmap,
                 host_addr: int) -> None:
        self.gpa, self.size, self.slot, self.readonly = gpa, size, slot, readonly
        self.fd, self.mapping, self.host_addr = fd, mapping, host_addr
        self.view = memoryview(mapping)

    @property
    def end(self) -> int:
        return self.gpa + self.size


def _host_address(mapping: mmap.mmap) -> int:
    anchor = C.c_char.from_buffer(mapping)
    address = C.addressof(anchor)
    del anchor
    return address


class GuestMemory:
    """RAM split around the 32-bit MMIO hole, each part a memfd mapping (snapshots read it back as files)."""

    def __init__(self, size: int, vm: Vm | None = None, *, dirty_log: bool = False) -> None:
        if size < MIN_MEMORY:
            raise ConfigError(f"memory {size} bytes is too small: at least {MIN_MEMORY // 1024 // 1024} MiB")
        if size % PAGE:
            raise ConfigError(f"memory {size} bytes is not a multiple of the {PAGE}-byte page")
        self.size = size
        self.vm = vm
        self.dirty_log = dirty_log
        self.regions: list[Region] = []
        low = min(size, MMIO_HOLE_START)
        try:
            self._add(0, low, readonly=False)
            if size > low:
                self._add(MMIO_HOLE_END, size - low, readonly=False)
        except BaseException:
            self.close()
            raise

    def _add(self, gpa: int, size: int, *, readonly: bool, data: bytes = b"") -> Region:
        fd = os.memfd_create(f"virtkit-guest-{gpa:#x}", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            if data:
                os.pwrite(fd, data, 0)
            mapping = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        region = Region(gpa, size, len(self.regions), readonly, fd, mapping, _host_address(mapping))
        self.regions.append(region)
        if self.vm is not None:
            flags = (abi.KVM_MEM_READONLY if readonly else 0) | (abi.KVM_MEM_LOG_DIRTY_PAGES if self.dirty_log
                                                                  and not readonly else 0)
            self.vm.set_memory_region(region.slot, gpa, size, region.host_addr, flags)
        return region

    def add_readonly(self, gpa: int, data: bytes) -> Region:
        """A read-only slot (a ROM): guest writes to it exit as MMIO instead of landing."""
        size = (len(data) + PAGE - 1) // PAGE * PAGE
        for region in self.regions:
            if gpa < region.end and region.gpa < gpa + size:
                raise GuestMemoryError(f"read-only region at {gpa:#x} overlaps guest memory at {region.gpa:#x}")
        return self._add(gpa, size, readonly=True, data=data)

    # -- bounds-checked access ------------------------------------------------------------------------------
    def _locate(self, gpa: int, length: int) -> tuple[Region, int]:
        if gpa < 0 or length < 0:
            raise GuestMemoryError(f"guest address {gpa:#x} (+{length}) is invalid")
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.end:
                return region, gpa - region.gpa
        raise GuestMemoryError(f"guest range {gpa:#x}..{gpa + length:#x} is outside guest memory")

    def view(self, gpa: int, length: int) -> memoryview:
        region, offset = self._locate(gpa, length)
        return region.view[offset:offset + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        region, offset = self._locate(gpa, len(data))
        if region.readonly:
            raise GuestMemoryError(f"guest range {gpa:#x}..{gpa + len(data):#x} is read-only")
        region.view[offset:offset + len(data)] = data

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.view(gpa, 8))[0]

    def write_u16(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<H", value))

    def write_u32(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<I", value))

    def write_u64(self, gpa: int, value: int) -> None:
        self.write(gpa, struct.pack("<Q", value))

    # -- what the guest is told -----------------------------------------------------------------------------
    def e820(self) -> list[tuple[int, int, int]]:
        """(address, size, type) entries: low RAM below the EBDA, the legacy area reserved, the rest RAM."""
        entries: list[tuple[int, int, int]] = [(0, EBDA_START, E820_RAM),
                                               (EBDA_START, HIGH_MEMORY - EBDA_START, E820_RESERVED)]
        for region in self.regions:
            if region.readonly:
                continue
            start = max(region.gpa, HIGH_MEMORY)
            if start < region.end:
                entries.append((start, region.end - start, E820_RAM))
        return entries

    # -- dirty log ------------------------------------------------------------------------------------------
    def dirty_pages(self) -> list[int]:
        """Guest-physical addresses of the pages written since the last call (KVM clears the log on read)."""
        if self.vm is None or not self.dirty_log:
            raise GuestMemoryError("dirty-page logging is not enabled for this guest memory")
        pages: list[int] = []
        for region in self.regions:
            if region.readonly:
                continue
            bitmap = self.vm.dirty_log(region.slot, region.size // PAGE)
            for word_index in range(0, len(bitmap), 8):
                word = int.from_bytes(bitmap[word_index:word_index + 8], "little")
                while word:
                    bit = (word & -word).bit_length() - 1
                    pages.append(region.gpa + ((word_index * 8) + bit) * PAGE)
                    word &= word - 1
        return pages

    def close(self) -> None:
        for region in self.regions:
            region.view.release()
            region.mapping.close()
            os.close(region.fd)
        self.regions = []
