"""The port-I/O and MMIO buses: which device answers an address, and the device interface they call."""

from __future__ import annotations

import bisect
import threading

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs virtkit-vmm's start ~3 ms; the protocol only matters to mypy
    from typing import Protocol

    class BusDevice(Protocol):
        """A device on a bus. Offsets are relative to the device's base; values are little-endian integers."""

        def read(self, offset: int, size: int) -> int: ...

        def write(self, offset: int, size: int, value: int) -> None: ...
else:
    BusDevice = object


class Bus:
    """Non-overlapping [base, base+length) ranges, each owned by one device; unclaimed reads return all ones."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bases: list[int] = []
        self._ranges: list[tuple[int, int, BusDevice]] = []
        self._lock = threading.Lock()
        self.unhandled = 0

    def register(self, base: int, length: int, device: BusDevice) -> None:
        if length <= 0:
            raise ValueError(f"{self.name} bus: length {length} must be positive")
        with self._lock:
            i = bisect.bisect_left(self._bases, base)
            for j in (i - 1, i):
                if 0 <= j < len(self._ranges):
                    b, n, _ = self._ranges[j]
                    if base < b + n and b < base + length:
                        raise ValueError(f"{self.name} bus: {base:#x}+{length:#x} overlaps {b:#x}+{n:#x}")
            self._bases.insert(i, base)
            self._ranges.insert(i, (base, length, device))

    def find(self, address: int) -> tuple[BusDevice, int] | None:
        i = bisect.bisect_right(self._bases, address) - 1
        if i < 0:
            return None
        base, length, device = self._ranges[i]
        if address < base + length:
            return device, address - base
        return None

    def read(self, address: int, size: int) -> int:
        hit = self.find(address)
        if hit is None:
            self.unhandled += 1
            return (1 << (8 * size)) - 1
        device, offset = hit
        return device.read(offset, size)

    def write(self, address: int, size: int, value: int) -> None:
        hit = self.find(address)
        if hit is None:
            self.unhandled += 1
            return
        device, offset = hit
        device.write(offset, size, value)
