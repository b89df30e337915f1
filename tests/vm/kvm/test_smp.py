"""Several vCPUs: the MP table that describes them, and an application processor woken by INIT/SIPI from the BSP."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from virtkit.vm.kvm import mptable
from virtkit.vm.kvm.errors import ConfigError

needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm (absent on this host)")


def test_mp_table_lists_every_vcpu_the_ioapic_and_checksums() -> None:
    data = mptable.build(4)
    assert data[:4] == b"_MP_" and sum(data[:16]) & 0xFF == 0
    table_addr = struct.unpack_from("<I", data, 4)[0]
    table = data[table_addr - mptable.MPTABLE_ADDR:]
    length, entries = struct.unpack_from("<H", table, 4)[0], struct.unpack_from("<H", table, 34)[0]
    assert table[:4] == b"PCMP" and len(table) == length and sum(table) & 0xFF == 0
    cpus = [table[i:i + 20] for i in range(44, 44 + 4 * 20, 20)]
    assert [(c[0], c[1], c[3]) for c in cpus] == [(0, 0, 3), (0, 1, 1), (0, 2, 1), (0, 3, 1)]   # BSP flagged
    assert entries == 4 + 1 + 1 + (mptable.IOAPIC_PINS - 1) + 2   # ISA IRQ2 (the cascade) has no entry
    irqs = {table[i + 5]: table[i + 7] for i in range(44 + 4 * 20 + 16, length - 16, 8) if table[i] == 3}
    assert irqs[0] == 2 and irqs[4] == 4 and 2 not in irqs        # the PIT on pin 2, COM1 on pin 4
    with pytest.raises(ConfigError, match="cpus 0"):
        mptable.build(0)


@needs_kvm
def test_bsp_starts_an_application_processor_with_init_sipi(tmp_path: Path) -> None:
    from virtkit.vm.kvm.machine import Machine, MachineConfig

    bsp = bytes.fromhex(
        "66 ba f8 03 b0 31 ee"          # out '1' to COM1
        "bb 00 03 e0 fe"                # mov ebx, 0xfee00300 (LAPIC ICR low; +0x10 is ICR high)
        "c7 43 10 00 00 00 01"          # ICR high: destination APIC id 1
        "c7 03 00 45 00 00"             # INIT
        "c7 43 10 00 00 00 01"
        "c7 03 08 46 00 00"             # SIPI, vector 0x08: the AP starts in real mode at 0x8000
        "80 3c 25 00 06 00 00 2a"       # wait: cmp byte [0x600], 0x2a
        "75 f6"                         #       jne wait
        "b0 07 e6 f4 f4")               # exit 7
    ap = bytes.fromhex(
        "ba f8 03 b0 32 ee"             # 16-bit: out '2' to COM1
        "c6 06 00 06 2a"                # mov byte [0x600], 0x2a: tell the BSP
        "f4 eb fd")                     # hlt forever
    guest = tmp_path / "smp.bin"
    guest.write_bytes(bsp)
    machine = Machine(MachineConfig(kernel=guest, kernel_format="flat", memory=8 << 20, cpus=2))
    try:
        machine.memory.write(0x8000, ap)
        machine.start()
        info = machine.wait(60)
        assert info is not None and (info.reason, info.status) == ("exit-port", 7), info
        assert machine.serial_output == b"12"
        per_vcpu = machine.stats()["vcpus"]
        assert [v["index"] for v in per_vcpu] == [0, 1]
        assert per_vcpu[1]["exits"].get("IO", 0) >= 1          # the AP's own OUT exited on its own vCPU
        assert machine.memory.read(mptable.MPTABLE_ADDR, 4) == b"_MP_"
    finally:
        machine.close()


@needs_kvm
def test_too_many_vcpus_is_a_clear_error(tmp_path: Path) -> None:
    from virtkit.vm.kvm.machine import Machine, MachineConfig

    guest = tmp_path / "g.bin"
    guest.write_bytes(b"\xf4")
    with pytest.raises(ConfigError, match="cpus 99"):
        Machine(MachineConfig(kernel=guest, kernel_format="flat", memory=8 << 20, cpus=99))
