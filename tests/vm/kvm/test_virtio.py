"""virtio-mmio devices driven from the host side as a guest driver would: rings in GuestMemory(vm=None)."""

from __future__ import annotations

import json
import os
import socket
import struct
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.vm.kvm.errors import DeviceError
from virtkit.vm.kvm.memory import GuestMemory
from virtkit.vm.kvm.virtio import BlockBackend, ConsoleBackend, NetBackend, RngBackend, VirtioBackend, VirtioMmioDevice
from virtkit.vm.kvm.virtio import spec as S

MEM = 16 << 20
DISK_SECTORS = 2048
IN, OUT, FLUSH, GET_ID = S.VIRTIO_BLK_T_IN, S.VIRTIO_BLK_T_OUT, S.VIRTIO_BLK_T_FLUSH, S.VIRTIO_BLK_T_GET_ID
OK, IOERR, UNSUPP = S.VIRTIO_BLK_S_OK, S.VIRTIO_BLK_S_IOERR, S.VIRTIO_BLK_S_UNSUPP
NEXT, WRITE, INDIRECT = S.VRING_DESC_F_NEXT, S.VRING_DESC_F_WRITE, S.VRING_DESC_F_INDIRECT
ALL_FEATURES = -1


class Ring:
    """The driver's side of one split virtqueue: descriptor table at base, avail at +4 KiB, used at +8 KiB."""

    def __init__(self, mem: GuestMemory, base: int, size: int) -> None:
        self.mem, self.size = mem, size
        self.desc, self.avail, self.used = base, base + 0x1000, base + 0x2000
        self.next_desc = self.avail_idx = self.seen = 0

    def put(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0, table: int | None = None) -> None:
        self.mem.write((self.desc if table is None else table) + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def chain(self, bufs: list[tuple[int, int, bool]]) -> int:
        head = self.next_desc
        for k, (addr, length, writable) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.put((head + k) % self.size, addr, length, (WRITE if writable else 0) | (0 if last else NEXT),
                     (head + k + 1) % self.size)
        self.next_desc = (head + len(bufs)) % self.size
        return head

    def offer(self, head: int, publish: bool = True) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        if publish:
            self.mem.write_u16(self.avail + 2, self.avail_idx)

    def take_used(self) -> list[tuple[int, int]]:
        out = []
        while self.seen != self.mem.read_u16(self.used + 2):
            out.append(struct.unpack("<II", self.mem.read(self.used + 4 + 8 * (self.seen % self.size), 8)))
            self.seen = (self.seen + 1) & 0xFFFF
        return out


class Guest:
    """A guest driver in miniature: negotiates, sets queues up, allocates buffers, counts interrupts."""

    def __init__(self, backend: VirtioBackend, mem: GuestMemory) -> None:
        self.mem = mem
        self.irqs = 0
        self.dev = VirtioMmioDevice(backend, mem, self._irq)
        self.heap = 0x800000     # clear of the fixed scratch addresses (0x200000..0x500000) tests use
        self.rings: list[Ring] = []

    def _irq(self) -> None:
        self.irqs += 1

    def reg(self, offset: int) -> int:
        return self.dev.read(offset, 4)

    def set(self, offset: int, value: int) -> None:
        self.dev.write(offset, 4, value)

    def alloc(self, n: int, data: bytes = b"") -> int:
        gpa = self.heap
        self.mem.write(gpa, data.ljust(n, b"\0"))
        self.heap += (n + 15) // 16 * 16
        return gpa

    def negotiate(self, features: int = ALL_FEATURES) -> bool:
        self.set(S.VIRTIO_MMIO_STATUS, 0)
        self.set(S.VIRTIO_MMIO_STATUS, S.VIRTIO_CONFIG_S_ACKNOWLEDGE | S.VIRTIO_CONFIG_S_DRIVER)
        offered = 0
        for sel in (0, 1):
            self.set(S.VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel)
            offered |= self.reg(S.VIRTIO_MMIO_DEVICE_FEATURES) << (32 * sel)
        chosen = offered & features if features != ALL_FEATURES else offered
        for sel in (0, 1):
            self.set(S.VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel)
            self.set(S.VIRTIO_MMIO_DRIVER_FEATURES, (chosen >> (32 * sel)) & 0xFFFFFFFF)
        self.set(S.VIRTIO_MMIO_STATUS, 0x3 | S.VIRTIO_CONFIG_S_FEATURES_OK)
        return bool(self.reg(S.VIRTIO_MMIO_STATUS) & S.VIRTIO_CONFIG_S_FEATURES_OK)

    def setup_queue(self, index: int, size: int = 8, base: int | None = None) -> Ring:
        ring = Ring(self.mem, 0x10000 * (index + 1) if base is None else base, size)
        if base is None:
            self.mem.write(ring.desc, bytes(0x3000))     # a driver hands over zeroed rings
        self.set(S.VIRTIO_MMIO_QUEUE_SEL, index)
        assert self.reg(S.VIRTIO_MMIO_QUEUE_READY) == 0
        for low, value in ((S.VIRTIO_MMIO_QUEUE_DESC_LOW, ring.desc), (S.VIRTIO_MMIO_QUEUE_AVAIL_LOW, ring.avail),
                           (S.VIRTIO_MMIO_QUEUE_USED_LOW, ring.used)):
            self.set(low, value & 0xFFFFFFFF)
            self.set(low + 4, value >> 32)
        self.set(S.VIRTIO_MMIO_QUEUE_NUM, size)
        self.set(S.VIRTIO_MMIO_QUEUE_READY, 1)
        return ring

    def start(self, features: int = ALL_FEATURES, size: int = 8) -> Guest:
        assert self.negotiate(features)
        self.rings = [self.setup_queue(i, size) for i in range(self.dev.num_queues)]
        self.set(S.VIRTIO_MMIO_STATUS, 0xF)
        return self

    @property
    def broken(self) -> bool:
        return bool(self.reg(S.VIRTIO_MMIO_STATUS) & S.VIRTIO_CONFIG_S_NEEDS_RESET)


@pytest.fixture
def mem() -> Iterator[GuestMemory]:
    m = GuestMemory(MEM)
    yield m
    m.close()


@pytest.fixture
def disk() -> Iterator[str]:
    fd, path = tempfile.mkstemp(prefix="vkt-disk-")
    os.write(fd, bytes(DISK_SECTORS * 512))
    os.close(fd)
    yield path
    os.unlink(path)


@pytest.fixture
def guests() -> Iterator[Callable[[VirtioBackend, GuestMemory], Guest]]:
    made: list[Guest] = []

    def make(backend: VirtioBackend, memory: GuestMemory) -> Guest:
        made.append(Guest(backend, memory))
        return made[-1]
    yield make
    for g in made:
        g.dev.close()


def blk(g: Guest, kind: int, sector: int = 0, data: bytes = b"", read_len: int = 0, *, indirect: bool = False,
        notify: Callable[[], None] | None = None) -> tuple[int, int, bytes]:
    """One request: (status, used length, bytes read)."""
    bufs = [(g.alloc(16, struct.pack("<IIQ", kind, 0, sector)), 16, False)]
    if data:
        bufs.append((g.alloc(len(data), data), len(data), False))
    rbuf = g.alloc(read_len) if read_len else 0
    if read_len:
        bufs.append((rbuf, read_len, True))
    status = g.alloc(1, b"\xee")
    bufs.append((status, 1, True))
    ring = g.rings[0]
    if indirect:
        table = g.alloc(16 * len(bufs))
        for k, (addr, length, writable) in enumerate(bufs):
            ring.put(k, addr, length, (WRITE if writable else 0) | (NEXT if k < len(bufs) - 1 else 0), k + 1, table)
        head = ring.next_desc
        ring.put(head, table, 16 * len(bufs), INDIRECT)
        ring.next_desc = (head + 1) % ring.size
        ring.offer(head)
    else:
        ring.offer(ring.chain(bufs))
    (notify or (lambda: g.set(S.VIRTIO_MMIO_QUEUE_NOTIFY, 0)))()
    used = ring.take_used()
    assert len(used) == 1
    return g.mem.read(status, 1)[0], used[0][1], g.mem.read(rbuf, read_len) if read_len else b""


def on_disk(path: str, sector: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(sector * 512)
        return f.read(n)


# -- transport --------------------------------------------------------------------------------------------------
def test_register_file(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem)
    assert g.reg(S.VIRTIO_MMIO_MAGIC_VALUE) == 0x74726976
    assert g.reg(S.VIRTIO_MMIO_VERSION) == 2
    assert g.reg(S.VIRTIO_MMIO_DEVICE_ID) == S.VIRTIO_ID_BLOCK
    g.set(S.VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1)
    assert g.reg(S.VIRTIO_MMIO_DEVICE_FEATURES) & 1        # VERSION_1 is bit 32
    g.set(S.VIRTIO_MMIO_QUEUE_SEL, 0)
    assert g.reg(S.VIRTIO_MMIO_QUEUE_NUM_MAX) == 256
    g.set(S.VIRTIO_MMIO_QUEUE_SEL, 1)
    assert g.reg(S.VIRTIO_MMIO_QUEUE_NUM_MAX) == 0          # no such queue
    assert g.dev.read(S.VIRTIO_MMIO_MAGIC_VALUE, 2) == 0    # registers take aligned 32-bit accesses only
    assert g.dev.read(S.VIRTIO_MMIO_CONFIG, 8) == DISK_SECTORS      # capacity, at config offset 0
    assert g.dev.read(S.VIRTIO_MMIO_CONFIG + 12, 4) > 0             # seg_max
    assert g.dev.read(S.VIRTIO_MMIO_CONFIG + 0x800, 4) == 0         # past the config: zero, no error


def test_features_without_version_1_or_unknown_are_refused(mem: GuestMemory, disk: str,
                                                          guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem)
    assert not g.negotiate(1 << S.VIRTIO_BLK_F_FLUSH)
    g.set(S.VIRTIO_MMIO_STATUS, 0)
    g.set(S.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0)
    g.set(S.VIRTIO_MMIO_DRIVER_FEATURES, 1 << 20)                   # not offered
    g.set(S.VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1)
    g.set(S.VIRTIO_MMIO_DRIVER_FEATURES, 1)
    g.set(S.VIRTIO_MMIO_STATUS, 0xB)
    assert not g.reg(S.VIRTIO_MMIO_STATUS) & S.VIRTIO_CONFIG_S_FEATURES_OK
    assert g.negotiate()


# -- virtio-blk -------------------------------------------------------------------------------------------------
def test_blk_write_read_flush_get_id(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk, serial="vkt-serial"), mem).start()
    data = os.urandom(1024)
    assert blk(g, OUT, 3, data) == (OK, 1, b"")
    assert on_disk(disk, 3, 1024) == data
    assert g.reg(S.VIRTIO_MMIO_INTERRUPT_STATUS) & S.VIRTIO_MMIO_INT_VRING and g.irqs == 1
    g.set(S.VIRTIO_MMIO_INTERRUPT_ACK, S.VIRTIO_MMIO_INT_VRING)
    assert g.reg(S.VIRTIO_MMIO_INTERRUPT_STATUS) == 0
    assert blk(g, IN, 3, read_len=1024, notify=lambda: g.dev.queue_notify(0)) == (OK, 1025, data)
    assert blk(g, FLUSH)[:2] == (OK, 1)
    status, used, ident = blk(g, GET_ID, read_len=20)
    assert (status, used, ident) == (OK, 21, b"vkt-serial".ljust(20, b"\0"))
    assert blk(g, 99)[0] == UNSUPP
    stats = g.dev.stats()
    assert stats["writes"] == 1 and stats["reads"] == 1 and stats["flushes"] == 1 and stats["bytes"] == 2048
    assert stats["errors"] == 1 and stats["broken_reason"] is None


def test_blk_indirect_descriptors(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    data = os.urandom(4096)
    assert blk(g, OUT, 100, data, indirect=True) == (OK, 1, b"")
    assert on_disk(disk, 100, 4096) == data
    assert blk(g, IN, 100, read_len=4096, indirect=True) == (OK, 4097, data)


def test_blk_bad_requests_fail_alone(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    assert blk(g, IN, DISK_SECTORS - 1, read_len=1024)[0] == IOERR        # runs past the end
    assert blk(g, OUT, 2**63, b"x" * 512)[0] == IOERR
    assert blk(g, OUT, 0, b"x" * 100)[0] == IOERR                         # not whole sectors
    assert blk(g, IN, 0, b"x" * 512, read_len=512)[0] == IOERR            # readable data on a read
    assert blk(g, OUT, 0, b"x" * 512, read_len=512)[0] == IOERR           # writable data on a write
    assert blk(g, IN, 0, read_len=512)[0] == OK and not g.broken


def test_blk_read_only_disk_refuses_writes(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk, readonly=True), mem).start()
    assert g.dev.device_features & (1 << S.VIRTIO_BLK_F_RO)
    assert blk(g, OUT, 0, b"\x55" * 512) == (IOERR, 1, b"")
    assert on_disk(disk, 0, 512) == bytes(512)
    assert blk(g, IN, 0, read_len=512)[0] == OK and blk(g, FLUSH)[0] == OK


def test_blk_without_flush_negotiated_is_write_through(mem: GuestMemory, disk: str,
                                                       guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start(features=~(1 << S.VIRTIO_BLK_F_FLUSH))
    assert blk(g, OUT, 1, b"\x11" * 512)[0] == OK and on_disk(disk, 1, 512) == b"\x11" * 512


def test_blk_buffers_offered_before_driver_ok_are_served_then(mem: GuestMemory, disk: str,
                                                             guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem)
    assert g.negotiate()
    ring = g.setup_queue(0)
    status = _status(g)
    ring.offer(ring.chain([(_hdr(g, OUT, 5), 16, False), (g.alloc(512, b"\x77" * 512), 512, False),
                           (status, 1, True)]))
    g.set(S.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    assert ring.take_used() == [] and on_disk(disk, 5, 512) == bytes(512)     # no buffers used before DRIVER_OK
    g.set(S.VIRTIO_MMIO_STATUS, 0xF)
    assert ring.take_used() == [(0, 1)] and on_disk(disk, 5, 512) == b"\x77" * 512 and g.irqs == 1


def test_blk_missing_disk_is_a_clear_error() -> None:
    with pytest.raises(DeviceError, match="cannot open disk"):
        BlockBackend("/nonexistent/vkt-disk.raw")


# -- malformed chains: the request fails, the chain comes back, nothing escapes ---------------------------------
def _hdr(g: Guest, kind: int = IN, sector: int = 0) -> int:
    return g.alloc(16, struct.pack("<IIQ", kind, 0, sector))


def _status(g: Guest) -> int:
    return g.alloc(1, b"\xee")


def _run(g: Guest, build: Callable[[Guest, int], list[tuple[int, int, int, int]]]) -> tuple[list[tuple[int, int]],
                                                                                            int]:
    """Write the descriptors `build` returns (addr, len, flags, next) at 0.., offer 0, notify."""
    status = _status(g)
    for i, (addr, length, flags, nxt) in enumerate(build(g, status)):
        g.rings[0].put(i, addr, length, flags, nxt)
    g.rings[0].offer(0)
    g.set(S.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    return g.rings[0].take_used(), g.mem.read(status, 1)[0]


BAD_CHAINS: dict[str, Callable[[Guest, int], list[tuple[int, int, int, int]]]] = {
    "data outside memory": lambda g, st: [(_hdr(g), 16, NEXT, 1), (MEM - 256, 512, WRITE | NEXT, 2),
                                          (st, 1, WRITE, 0)],
    "address overflows 64 bits": lambda g, st: [(_hdr(g), 16, NEXT, 1), (2**64 - 8, 512, WRITE | NEXT, 2),
                                                (st, 1, WRITE, 0)],
    "huge length": lambda g, st: [(_hdr(g), 16, NEXT, 1), (0x200000, 0xFFFFFFFF, WRITE | NEXT, 2),
                                  (st, 1, WRITE, 0)],
    "next out of range": lambda g, st: [(_hdr(g), 16, NEXT, 1), (st, 1, WRITE | NEXT, 200)],
    "header device-writable": lambda g, st: [(_hdr(g), 16, WRITE | NEXT, 1), (st, 1, WRITE, 0)],
    "readable after writable": lambda g, st: [(_hdr(g), 16, NEXT, 1), (0x300000, 512, WRITE | NEXT, 2),
                                              (0x300000, 512, NEXT, 3), (st, 1, WRITE, 0)],
    "read into a driver-readable buffer": lambda g, st: [(_hdr(g), 16, NEXT, 1), (0x300000, 512, NEXT, 2),
                                                         (st, 1, WRITE, 0)],
    "short header": lambda g, st: [(_hdr(g), 8, NEXT, 1), (st, 1, WRITE, 0)],
}


@pytest.mark.parametrize("case", sorted(BAD_CHAINS))
def test_malformed_chain_fails_with_ioerr(case: str, mem: GuestMemory, disk: str,
                                          guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    used, status = _run(g, BAD_CHAINS[case])
    assert used == [(0, 1)] and status == IOERR
    assert not g.broken and g.dev.stats()["errors"] == 1
    assert blk(g, IN, 0, read_len=512)[0] == OK       # the device carries on


def test_descriptor_loop_fails_the_request(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    # a chain that never ends has no last byte for a status: it comes back failed, wherever the IOERR went
    used, _ = _run(g, lambda g, st: [(_hdr(g), 16, NEXT, 1), (0x300000, 512, WRITE | NEXT, 2),
                                     (st, 1, WRITE | NEXT, 1)])
    assert [head for head, _ in used] == [0] and g.dev.stats()["errors"] == 1 and not g.broken
    assert blk(g, IN, 0, read_len=512)[0] == OK


def _indirect(g: Guest, table_len: int, flags: int = INDIRECT, nested: bool = False,
              addr: int | None = None) -> list[tuple[int, int, int, int]]:
    table = g.alloc(64)
    g.mem.write(table, struct.pack("<QIHH", _hdr(g), 16, NEXT | (INDIRECT if nested else 0), 1))
    return [(table if addr is None else addr, table_len, flags, 0)]


NO_STATUS_CHAINS: dict[str, Callable[[Guest, int], list[tuple[int, int, int, int]]]] = {
    "status driver-readable": lambda g, st: [(_hdr(g), 16, NEXT, 1), (st, 1, 0, 0)],
    "status zero length": lambda g, st: [(_hdr(g), 16, NEXT, 1), (st, 0, WRITE, 0)],
    "indirect length not a multiple of 16": lambda g, st: _indirect(g, 40),
    "indirect length zero": lambda g, st: _indirect(g, 0),
    "indirect longer than the queue": lambda g, st: _indirect(g, 16 * 9),
    "indirect with NEXT": lambda g, st: _indirect(g, 32, INDIRECT | NEXT),
    "nested indirect": lambda g, st: _indirect(g, 32, nested=True),
    "indirect table outside memory": lambda g, st: _indirect(g, 32, addr=MEM - 16),
    "indirect after a direct descriptor": lambda g, st: [(_hdr(g), 16, NEXT, 1), (g.alloc(32), 32, INDIRECT, 0)],
}


@pytest.mark.parametrize("case", sorted(NO_STATUS_CHAINS))
def test_malformed_chain_without_status_comes_back_empty(case: str, mem: GuestMemory, disk: str,
                                                        guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    used, status = _run(g, NO_STATUS_CHAINS[case])
    assert used == [(0, 0)] and status == 0xEE
    assert not g.broken and g.dev.stats()["errors"] == 1
    assert blk(g, IN, 0, read_len=512)[0] == OK


def test_indirect_refused_when_not_negotiated(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start(features=~(1 << S.VIRTIO_RING_F_INDIRECT_DESC))
    used, _ = _run(g, lambda g, st: _indirect(g, 32))
    assert used == [(0, 0)] and g.dev.stats()["errors"] == 1


def test_descriptor_across_the_mmio_hole_fails(disk: str, guests: Callable[..., Guest]) -> None:
    big = GuestMemory((3 << 30) + (2 << 20))      # RAM below 3 GiB and 2 MiB above 4 GiB; sparse memfds
    try:
        g = guests(BlockBackend(disk), big).start()
        used, status = _run(g, lambda g, st: [(_hdr(g), 16, NEXT, 1), ((3 << 30) - 256, 512, WRITE | NEXT, 2),
                                              (st, 1, WRITE, 0)])
        assert used == [(0, 1)] and status == IOERR
        used, status = _run(g, lambda g, st: [(_hdr(g), 16, NEXT, 1), (0xD0000000, 512, WRITE | NEXT, 2),
                                              (st, 1, WRITE, 0)])
        assert used == [(0, 1)] and status == IOERR
        used, status = _run(g, lambda g, st: [(_hdr(g), 16, NEXT, 1), (1 << 32, 512, WRITE | NEXT, 2),
                                              (st, 1, WRITE, 0)])
        assert used == [(0, 513)] and status == OK     # RAM above the hole is RAM
        g.dev.close()
    finally:
        big.close()


def _breaks(g: Guest) -> None:
    assert g.broken
    assert g.reg(S.VIRTIO_MMIO_INTERRUPT_STATUS) & S.VIRTIO_MMIO_INT_CONFIG and g.irqs >= 1
    assert g.dev.stats()["broken_reason"]


def test_avail_index_jump_breaks_device_until_reset(mem: GuestMemory, disk: str,
                                                    guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    mem.write_u16(g.rings[0].avail + 2, 9)           # nine new entries in a ring of eight
    g.set(S.VIRTIO_MMIO_QUEUE_NOTIFY, 0)
    _breaks(g)
    g.dev.queue_notify(0)                            # no further processing
    assert g.rings[0].take_used() == []
    g.start()                                        # the driver resets and starts over: all is well again
    assert not g.broken and blk(g, IN, 0, read_len=512)[0] == OK


def test_avail_head_out_of_range_breaks_device(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    g.rings[0].offer(8)
    g.dev.queue_notify(0)
    _breaks(g)


@pytest.mark.parametrize("base, size", [(MEM - 0x1000, 8), (0x10008, 8), (0x10000, 6), (0x10000, 512),
                                        (0xD0000000, 8), (2**64 - 0x4000, 8)])
def test_bad_queue_layout_breaks_device(base: int, size: int, mem: GuestMemory, disk: str,
                                        guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem)
    assert g.negotiate()
    g.setup_queue(0, size, base)
    _breaks(g)
    assert g.reg(S.VIRTIO_MMIO_QUEUE_READY) == 0


_WELL_FORMED = [(0x200000, 16, NEXT), (0x200010, 16, NEXT), (0x300000, 512, WRITE | NEXT), (0x300000, 512, NEXT),
                (0x300200, 1, WRITE), (0x400000, 48, INDIRECT)]
_ANY_DESC = st.tuples(st.sampled_from([0x200000, 0x300000, MEM - 1, 0x10000, 2**64 - 1, 0x400000]),
                      st.sampled_from([0, 1, 8, 16, 32, 512, 0x100000, 0xFFFFFFFF]), st.integers(0, 7),
                      st.integers(0, 9))
_NICE_DESC = st.tuples(st.sampled_from(_WELL_FORMED), st.integers(0, 9)).map(lambda t: (*t[0], t[1]))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(descs=st.lists(st.one_of(_NICE_DESC, _ANY_DESC), min_size=8, max_size=8),
       heads=st.lists(st.integers(0, 8), min_size=1, max_size=8), idx=st.integers(0, 0xFFFF))
def test_random_rings_never_raise(disk: str, descs: list[tuple[int, int, int, int]], heads: list[int],
                                  idx: int) -> None:
    memory = GuestMemory(MEM)
    backend = BlockBackend(disk)
    try:
        memory.write(0x200000, struct.pack("<IIQ", IN, 0, 0) + struct.pack("<IIQ", OUT, 0, 1))
        # 0x400000: an indirect table of a well-formed read, for chains that land on it
        for i, desc in enumerate([(0x200000, 16, NEXT, 1), (0x300000, 512, WRITE | NEXT, 2), (0x300200, 1, WRITE, 0)]):
            memory.write(0x400000 + 16 * i, struct.pack("<QIHH", *desc))
        g = Guest(backend, memory).start()
        for i, desc in enumerate(descs):
            g.rings[0].put(i, *desc)
        for head in heads:
            g.rings[0].offer(head, publish=False)
        memory.write_u16(g.rings[0].avail + 2, idx if idx % 5 == 0 else len(heads))
        g.dev.queue_notify(0)
        g.dev.queue_notify(0)
        reason = g.dev.stats()["broken_reason"]
        assert reason is None or not reason.startswith("internal error"), reason
        assert len(g.rings[0].take_used()) <= 8
    finally:
        backend.close()
        memory.close()


# -- snapshot ---------------------------------------------------------------------------------------------------
def test_save_restore_continues_mid_stream(mem: GuestMemory, disk: str, guests: Callable[..., Guest]) -> None:
    g = guests(BlockBackend(disk), mem).start()
    assert blk(g, OUT, 0, b"\x01" * 512)[0] == OK
    assert blk(g, OUT, 1, b"\x02" * 512)[0] == OK
    hdr, data, status = _hdr(g, OUT, 2), g.alloc(512, b"\x03" * 512), _status(g)
    g.rings[0].offer(g.rings[0].chain([(hdr, 16, False), (data, 512, False), (status, 1, True)]))
    state = json.loads(json.dumps(g.dev.save()))     # made available, not yet notified
    g.dev.close()
    g2 = guests(BlockBackend(disk), mem)
    g2.dev.restore(state)
    g2.dev.queue_notify(0)
    assert g.rings[0].take_used() == [(6, 1)] and mem.read(status, 1)[0] == OK
    assert on_disk(disk, 0, 1536) == b"\x01" * 512 + b"\x02" * 512 + b"\x03" * 512
    assert g2.dev.stats()["writes"] == 3 and mem.read_u16(g.rings[0].used + 2) == 3
    with pytest.raises(DeviceError):
        guests(RngBackend(), mem).dev.restore(state)
    with pytest.raises(DeviceError):
        guests(BlockBackend(disk), mem).dev.restore({"version": 1})


# -- virtio-rng -------------------------------------------------------------------------------------------------
def test_rng_fills_buffers_and_caps_them(mem: GuestMemory, guests: Callable[..., Guest]) -> None:
    g = guests(RngBackend(), mem).start()
    small, big = g.alloc(64), g.alloc(1 << 20)
    ring = g.rings[0]
    ring.offer(ring.chain([(small, 64, True)]))
    ring.offer(ring.chain([(big, 1 << 20, True)]))
    ring.offer(ring.chain([(small, 64, False)]))       # driver-readable: not an entropy request
    g.dev.queue_notify(0)
    heads = ring.take_used()
    assert [n for _, n in heads] == [64, 64 * 1024, 0]
    assert mem.read(small, 64) != bytes(64) and mem.read(big + 64 * 1024, 16) == bytes(16)


# -- virtio-console ---------------------------------------------------------------------------------------------
def test_console_output_and_input(mem: GuestMemory, guests: Callable[..., Guest]) -> None:
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    try:
        g = guests(ConsoleBackend(out_w, in_r), mem)
        [(fd, on_input)] = g.dev.event_sources()
        assert fd == in_r
        os.write(in_w, b"typed early")
        on_input()                                     # the driver is not up: held back
        g.start()
        rx, tx = g.rings
        tx.offer(tx.chain([(g.alloc(6, b"hello "), 6, False), (g.alloc(5, b"world"), 5, False)]))
        g.set(S.VIRTIO_MMIO_QUEUE_NOTIFY, 1)
        assert os.read(out_r, 100) == b"hello world" and tx.take_used() == [(0, 0)]
        buf = g.alloc(8)
        rx.offer(rx.chain([(buf, 8, True)]))
        g.dev.queue_notify(0)
        assert rx.take_used() == [(0, 8)] and mem.read(buf, 8) == b"typed ea"
        state = json.loads(json.dumps(g.dev.save()))
        g2 = guests(ConsoleBackend(out_w, in_r), mem)
        g2.dev.restore(state)
        rx.offer(rx.chain([(buf, 8, True)]))
        g2.dev.queue_notify(0)
        assert rx.take_used() == [(1, 3)] and mem.read(buf, 3) == b"rly"
        os.write(in_w, b"!")
        rx.offer(rx.chain([(buf, 8, True)]))
        g2.dev.queue_notify(0)
        g2.dev.event_sources()[0][1]()
        assert rx.take_used() == [(2, 1)] and mem.read(buf, 1) == b"!"
    finally:
        for fd in (out_r, out_w, in_r, in_w):
            os.close(fd)


def test_console_output_to_callback(mem: GuestMemory, guests: Callable[..., Guest]) -> None:
    seen: list[bytes] = []
    g = guests(ConsoleBackend(seen.append), mem).start()
    tx = g.rings[1]
    tx.offer(tx.chain([(g.alloc(3, b"abc"), 3, False)]))
    g.dev.queue_notify(1)
    assert b"".join(seen) == b"abc" and g.dev.stats()["output_bytes"] == 3


def test_register_access_races_with_processing(mem: GuestMemory, guests: Callable[..., Guest]) -> None:
    g = guests(RngBackend(), mem).start(size=256)
    stop = threading.Event()

    def poll_registers() -> None:
        while not stop.is_set():
            g.dev.read(S.VIRTIO_MMIO_INTERRUPT_STATUS, 4)
            g.dev.write(S.VIRTIO_MMIO_INTERRUPT_ACK, 4, 1)
    reader = threading.Thread(target=poll_registers)
    reader.start()
    try:
        for _ in range(200):
            g.rings[0].offer(g.rings[0].chain([(0x300000, 32, True)]))
            g.dev.queue_notify(0)
    finally:
        stop.set()
        reader.join()
    assert len(g.rings[0].take_used()) == 200 and not g.broken


# -- virtio-net against a real TAP ------------------------------------------------------------------------------
ETH_P_ALL = 0x0003
MARK = 0x88B5   # IEEE local experimental EtherType: nothing else on the TAP sends it


@pytest.fixture
def tap() -> Iterator[str]:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun")
    from pyroute2 import IPRoute
    name = f"vkt{uuid.uuid4().hex[:10]}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
        try:
            with open(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6", "w") as f:
                f.write("1")         # no router solicitations or MLD reports among the test's frames
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
            yield name
        finally:
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])


def _frame(payload: bytes, src: bytes = b"\x02\0\0\0\0\x01") -> bytes:
    return b"\xff" * 6 + src + struct.pack("!H", MARK) + payload.ljust(46, b"\0")


@pytest.mark.parametrize("vnet_hdr", [False, True])
def test_net_tx_and_rx_through_a_tap(vnet_hdr: bool, tap: str, mem: GuestMemory,
                                     guests: Callable[..., Guest]) -> None:
    import fcntl

    from virtkit.vm.kvm.virtio import net
    tap_fd = os.open("/dev/net/tun", os.O_RDWR) if vnet_hdr else -1
    host = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        if vnet_hdr:    # an fd handed over with a vnet header (the kernel's default 10 bytes)
            flags = net.IFF_TAP | net.IFF_NO_PI | net.IFF_VNET_HDR
            fcntl.ioctl(tap_fd, net.TUNSETIFF, struct.pack("16sH22x", tap.encode(), flags))
        g = guests(NetBackend(tap_fd if vnet_hdr else tap, "52:54:00:aa:bb:cc"), mem)
        assert g.dev.backend.tap_header == (10 if vnet_hdr else 0)  # type: ignore[attr-defined]
        assert g.dev.read(S.VIRTIO_MMIO_CONFIG, 4) | g.dev.read(S.VIRTIO_MMIO_CONFIG + 4, 2) << 32 == 0xCCBBAA005452
        assert g.dev.read(S.VIRTIO_MMIO_CONFIG + 6, 2) == S.VIRTIO_NET_S_LINK_UP
        host.bind((tap, 0))
        host.settimeout(5)
        g.start()
        rx, tx = g.rings
        # guest -> TAP: header and frame split over descriptors, header stripped
        out = _frame(b"from the guest")
        tx.offer(tx.chain([(g.alloc(12, b"\x01" * 12), 12, False), (g.alloc(len(out), out), len(out), False)]))
        g.set(S.VIRTIO_MMIO_QUEUE_NOTIFY, 1)
        assert tx.take_used() == [(0, 0)]
        while (got := host.recv(65536))[12:14] != struct.pack("!H", MARK):
            pass
        assert got == out
        # TAP -> guest, with no buffer posted: dropped, not left to spin the event loop
        [(fd, on_readable)] = g.dev.event_sources()
        host.send(_frame(b"nobody listens"))
        on_readable()
        assert g.dev.stats()["rx_dropped"] >= 1
        # a buffer too small keeps its place; the next buffer is big enough
        small, bufs = g.alloc(20), [g.alloc(2048) for _ in range(4)]
        rx.offer(rx.chain([(small, 20, True)]))
        host.send(_frame(b"x" * 100))
        on_readable()
        assert rx.take_used() == []
        g.set(S.VIRTIO_MMIO_STATUS, 0)
        g.start()
        rx, tx = g.rings
        for buf in bufs:
            rx.offer(rx.chain([(buf, 12, True), (buf + 12, 2036, True)]))
        g.dev.queue_notify(0)
        host.send(_frame(b"to the guest"))
        on_readable()
        used = rx.take_used()
        frames = [mem.read(bufs[head // 2], n) for head, n in used]
        mine = [f for f in frames if f[24:26] == struct.pack("!H", MARK)]
        assert mine and mine[0] == struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 1) + _frame(b"to the guest")
        assert g.reg(S.VIRTIO_MMIO_INTERRUPT_STATUS) & S.VIRTIO_MMIO_INT_VRING
        stats = g.dev.stats()
        assert stats["tx_packets"] == 1 and stats["rx_packets"] >= 1 and stats["tap"] == tap
        assert json.loads(json.dumps(g.dev.save()))["backend"]["mac"] == "52:54:00:aa:bb:cc"
    finally:
        host.close()
        if tap_fd >= 0:
            os.close(tap_fd)


def test_net_rejects_bad_mac_and_tun() -> None:
    with pytest.raises(DeviceError, match="unicast"):
        NetBackend(-1, "01:00:5e:00:00:01")
    with pytest.raises(DeviceError, match="TAP name"):
        NetBackend("vkt-name-far-too-long")
