"""Split virtqueues: the descriptor table and the available and used rings, walked defensively against the guest.

Every value read from the rings is guest-controlled. A malformed chain (bad address, loop, bad flags, an
indirect table of the wrong shape) comes back as a `Chain` with `error` set, so the device can fail that one
request and return it; a broken ring invariant (an available index that jumps, a head out of range) raises
`QueueBroken`, after which the device must be reset. All guest accesses go through GuestMemory.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from virtkit.vm.kvm.errors import DeviceError, GuestMemoryError
from virtkit.vm.kvm.memory import GuestMemory
from virtkit.vm.kvm.virtio.spec import (
    VRING_AVAIL_F_NO_INTERRUPT,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    VRING_DESC_SIZE,
    VRING_USED_ELEM_SIZE,
)

Segment = tuple[int, int]            # (guest-physical address, length)
_DESC = struct.Struct("<QIHH")       # struct vring_desc: addr, len, flags, next
_USED_ELEM = struct.Struct("<II")    # struct vring_used_elem: id, len


class QueueBroken(DeviceError):
    """The guest broke a ring invariant that no single request can absorb: the device needs a reset."""


@dataclass
class Chain:
    """One descriptor chain taken from the available ring: driver-readable then device-writable segments."""

    head: int
    readable: list[Segment] = field(default_factory=list)
    writable: list[Segment] = field(default_factory=list)
    error: str | None = None

    @property
    def readable_len(self) -> int:
        return sum(n for _, n in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(n for _, n in self.writable)


def in_memory(memory: GuestMemory, gpa: int, length: int) -> bool:
    """Whether [gpa, gpa+length) lies inside one stretch of guest RAM (so never across the MMIO hole)."""
    try:
        memory.view(gpa, length).release()
    except GuestMemoryError:
        return False
    return True


def pieces(segments: list[Segment], offset: int, length: int) -> Iterator[Segment]:
    """The (gpa, length) pieces that make up bytes [offset, offset+length) of a chain's segment list."""
    for gpa, n in segments:
        if length <= 0:
            return
        if offset >= n:
            offset -= n
            continue
        take = min(n - offset, length)
        yield gpa + offset, take
        length -= take
        offset = 0


def gather(memory: GuestMemory, segments: list[Segment], offset: int, length: int) -> bytes:
    """Bytes [offset, offset+length) of the segments; the caller caps `length` (it sizes a host buffer)."""
    return b"".join(memory.read(gpa, n) for gpa, n in pieces(segments, offset, length))


def scatter(memory: GuestMemory, segments: list[Segment], offset: int, data: bytes | memoryview) -> int:
    """Write `data` at byte `offset` of the segments, as far as they reach; returns the bytes written."""
    src = memoryview(data)
    done = 0
    for gpa, n in pieces(segments, offset, len(src)):
        memory.write(gpa, src[done:done + n])
        done += n
    return done


class Virtqueue:
    """One split virtqueue as the transport configures it and the device backend consumes it."""

    def __init__(self, memory: GuestMemory, index: int, max_size: int) -> None:
        self.memory = memory
        self.index = index
        self.max_size = max_size
        self.indirect = False            # VIRTIO_RING_F_INDIRECT_DESC negotiated
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc = self.avail = self.used = 0
        self.last_avail_idx = 0
        self.used_idx = 0
        self.pending_signal = False      # used entries added since the last interrupt

    # -- setup ----------------------------------------------------------------------------------------------
    def check_layout(self) -> None:
        """Raise QueueBroken unless size and ring addresses are valid and the rings lie in guest RAM."""
        if not 1 <= self.size <= self.max_size or self.size & (self.size - 1):
            raise QueueBroken(f"queue {self.index}: size {self.size} is not a power of 2 in 1..{self.max_size}")
        rings = (("descriptor table", self.desc, 16, VRING_DESC_SIZE * self.size),
                 ("available ring", self.avail, 2, 6 + 2 * self.size),
                 ("used ring", self.used, 4, 6 + VRING_USED_ELEM_SIZE * self.size))
        for name, gpa, align, length in rings:
            if gpa % align:
                raise QueueBroken(f"queue {self.index}: {name} at {gpa:#x} is not {align}-byte aligned")
            if not in_memory(self.memory, gpa, length):
                raise QueueBroken(f"queue {self.index}: {name} at {gpa:#x}+{length:#x} is outside guest memory")

    def activate(self) -> None:
        self.check_layout()
        self.last_avail_idx = 0
        self.used_idx = 0
        self.ready = True

    # -- the available ring ---------------------------------------------------------------------------------
    def _read_u16(self, gpa: int) -> int:
        try:
            return self.memory.read_u16(gpa)
        except GuestMemoryError as exc:     # only if the rings moved under us (check_layout passed)
            raise QueueBroken(f"queue {self.index}: {exc}") from exc

    def pending(self) -> int:
        """How many chains the driver has made available that the device has not taken."""
        count = (self._read_u16(self.avail + 2) - self.last_avail_idx) & 0xFFFF
        if count > self.size:
            raise QueueBroken(f"queue {self.index}: available index moved by {count}, more than the queue size "
                              f"{self.size}")
        return count

    def pop(self) -> Chain | None:
        """The next available chain, or None; a malformed chain comes back with `error` set."""
        if not self.ready or not self.pending():
            return None
        head = self._read_u16(self.avail + 4 + 2 * (self.last_avail_idx % self.size))
        if head >= self.size:
            raise QueueBroken(f"queue {self.index}: available ring names descriptor {head}, queue size {self.size}")
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return self._walk(head)

    def undo_pop(self) -> None:
        """Give the last popped chain back (a device that found it could not use it yet)."""
        self.last_avail_idx = (self.last_avail_idx - 1) & 0xFFFF

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        table, table_size = self.desc, self.size
        index, count, nested = head, 0, False
        while True:
            if index >= table_size:
                chain.error = f"descriptor index {index} is outside the table of {table_size}"
                return chain
            count += 1
            if count > table_size:    # a chain can visit each descriptor once: more means a loop
                chain.error = f"chain longer than its table of {table_size} descriptors (a loop?)"
                return chain
            try:
                addr, length, flags, nxt = _DESC.unpack(self.memory.read(table + VRING_DESC_SIZE * index,
                                                                          VRING_DESC_SIZE))
            except GuestMemoryError as exc:
                raise QueueBroken(f"queue {self.index}: descriptor table unreadable: {exc}") from exc
            if flags & VRING_DESC_F_INDIRECT:
                problem = self._indirect_problem(nested, count, flags, addr, length)
                if problem:
                    chain.error = problem
                    return chain
                table, table_size = addr, length // VRING_DESC_SIZE
                index, count, nested = 0, 0, True
                continue
            if length and not in_memory(self.memory, addr, length):
                # fail the request but keep walking, so the status byte at the chain's end can still be found
                chain.error = chain.error or f"descriptor {index}: {addr:#x}+{length:#x} is outside guest memory"
            elif flags & VRING_DESC_F_WRITE:
                if length:
                    chain.writable.append((addr, length))
            elif chain.writable:
                chain.error = chain.error or f"descriptor {index}: driver-readable after a device-writable one"
            elif length:
                chain.readable.append((addr, length))
            if not flags & VRING_DESC_F_NEXT:
                return chain
            index = nxt

    def _indirect_problem(self, nested: bool, count: int, flags: int, addr: int, length: int) -> str | None:
        if not self.indirect:
            return "indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated"
        if nested:
            return "indirect descriptor inside an indirect table"
        if count != 1 or flags & VRING_DESC_F_NEXT:
            return "an indirect descriptor must be the whole chain (no NEXT, nothing before it)"
        if length == 0 or length % VRING_DESC_SIZE:
            return f"indirect table length {length} is not a positive multiple of {VRING_DESC_SIZE}"
        if length // VRING_DESC_SIZE > self.size:
            return f"indirect table of {length // VRING_DESC_SIZE} descriptors is longer than the queue ({self.size})"
        if not in_memory(self.memory, addr, length):
            return f"indirect table at {addr:#x}+{length:#x} is outside guest memory"
        return None

    # -- the used ring --------------------------------------------------------------------------------------
    def push(self, head: int, length: int) -> None:
        """Return a chain to the driver, `length` bytes written into its device-writable part."""
        slot = self.used + 4 + VRING_USED_ELEM_SIZE * (self.used_idx % self.size)
        try:
            self.memory.write(slot, _USED_ELEM.pack(head, length & 0xFFFFFFFF))
            # the element must be visible before the index that publishes it (x86 keeps store order)
            self.used_idx = (self.used_idx + 1) & 0xFFFF
            self.memory.write_u16(self.used + 2, self.used_idx)
        except GuestMemoryError as exc:
            raise QueueBroken(f"queue {self.index}: used ring unwritable: {exc}") from exc
        self.pending_signal = True

    def interrupt_wanted(self) -> bool:
        """Whether the driver wants an interrupt now (it may suppress them with VRING_AVAIL_F_NO_INTERRUPT)."""
        return not self._read_u16(self.avail) & VRING_AVAIL_F_NO_INTERRUPT

    # -- snapshot -------------------------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        return {"size": self.size, "ready": self.ready, "desc": self.desc, "avail": self.avail, "used": self.used,
                "last_avail_idx": self.last_avail_idx, "used_idx": self.used_idx}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            values = {k: int(state[k]) for k in ("size", "desc", "avail", "used", "last_avail_idx", "used_idx")}
            ready = bool(state["ready"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DeviceError(f"queue {self.index}: snapshot state is malformed: {exc!r}") from exc
        self.size, self.desc, self.avail, self.used = values["size"], values["desc"], values["avail"], values["used"]
        self.last_avail_idx = values["last_avail_idx"] & 0xFFFF
        self.used_idx = values["used_idx"] & 0xFFFF
        self.pending_signal = False
        self.ready = False
        if ready:
            self.check_layout()
            self.ready = True
