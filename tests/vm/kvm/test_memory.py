"""Guest memory: the x86 layout around the MMIO hole, bounds checks, and a read-only slot the guest cannot write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtkit.vm.kvm.errors import ConfigError, GuestMemoryError
from virtkit.vm.kvm.layout import E820_RAM, E820_RESERVED, ROM_ADDR, ROM_SIGNATURE
from virtkit.vm.kvm.memory import GuestMemory

GiB = 1 << 30
needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm (absent on this host)")


def test_memory_above_3_gib_goes_above_the_hole() -> None:
    mem = GuestMemory(5 * GiB)          # memfd-backed and untouched: costs nothing until written
    try:
        assert [(r.gpa, r.size) for r in mem.regions] == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]
        assert mem.e820() == [(0, 0x9FC00, E820_RAM), (0x9FC00, 0x100000 - 0x9FC00, E820_RESERVED),
                              (0x100000, 3 * GiB - 0x100000, E820_RAM), (4 * GiB, 2 * GiB, E820_RAM)]
        mem.write(4 * GiB + 8, b"high")
        assert mem.read(4 * GiB + 8, 4) == b"high"
        with pytest.raises(GuestMemoryError, match="outside guest memory"):
            mem.read(3 * GiB - 2, 4)        # runs into the hole
        with pytest.raises(GuestMemoryError, match="outside guest memory"):
            mem.write(6 * GiB, b"x")
        with pytest.raises(GuestMemoryError):
            mem.read(-1, 1)
    finally:
        mem.close()


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ConfigError, match="too small"):
        GuestMemory(1 << 20)
    with pytest.raises(ConfigError, match="multiple of"):
        GuestMemory((4 << 20) + 3)


def test_readonly_region_refuses_overlap_and_host_writes() -> None:
    mem = GuestMemory(16 << 20)
    try:
        with pytest.raises(GuestMemoryError, match="overlaps"):
            mem.add_readonly(0x1000, b"rom")
        mem.add_readonly(ROM_ADDR, b"rom")
        assert mem.read(ROM_ADDR, 3) == b"rom"
        with pytest.raises(GuestMemoryError, match="read-only"):
            mem.write(ROM_ADDR, b"x")
    finally:
        mem.close()


@needs_kvm
def test_guest_reads_the_rom_and_its_write_exits_instead_of_landing(tmp_path: Path) -> None:
    from virtkit.vm.kvm.machine import Machine, MachineConfig

    code = bytes.fromhex(
        "bb 00 f0 ff ff"        # mov ebx, 0xfffff000 (zero-extended: the ROM)
        "8a 03"                 # mov al, [rbx]        -> 'v'
        "66 ba f8 03"           # mov dx, 0x3f8
        "ee"                    # out dx, al
        "c6 03 58"              # mov byte [rbx], 'X'  -> an MMIO exit, nothing written
        "8a 03"                 # mov al, [rbx]
        "ee"                    # out dx, al           -> still 'v'
        "b0 05 e6 f4 f4")       # exit 5
    guest = tmp_path / "rom.bin"
    guest.write_bytes(code)
    machine = Machine(MachineConfig(kernel=guest, kernel_format="flat", memory=8 << 20))
    try:
        machine.start()
        info = machine.wait(30)
        assert info is not None and (info.reason, info.status) == ("exit-port", 5), info
        assert machine.serial_output == b"vv"
        assert machine.stats()["exits"].get("MMIO") == 1
        assert machine.mmio_bus.unhandled == 1
        assert machine.memory.read(ROM_ADDR, len(ROM_SIGNATURE)) == ROM_SIGNATURE
    finally:
        machine.close()
