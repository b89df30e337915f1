"""The Intel MultiProcessor table: how a guest without ACPI finds its vCPUs, its IOAPIC and the ISA IRQ routing."""

from __future__ import annotations

import struct

from virtkit.vm.kvm.errors import ConfigError
from virtkit.vm.kvm.layout import EBDA_START, IOAPIC_BASE, IOAPIC_PINS, LAPIC_BASE, TIMER_IOAPIC_PIN
from virtkit.vm.kvm.memory import GuestMemory

MPTABLE_ADDR = EBDA_START       # inside the last KiB of base memory, which Linux scans for "_MP_"
SPEC_REV = 4
APIC_VERSION, IOAPIC_VERSION = 0x14, 0x11
CPU_ENABLED, CPU_BSP = 1, 2
INT_TYPE_INT, INT_TYPE_NMI, INT_TYPE_EXTINT = 0, 1, 3
MAX_CPUS = 254 - 1               # APIC ids 0..N-1 for vCPUs, N for the IOAPIC, below 0xFF (broadcast)

_FLOATING = struct.Struct("<4sIBBBB4s")           # "_MP_", config table address, length/16, rev, checksum, features
_HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")      # "PCMP", length, rev, checksum, OEM, product, ..., LAPIC address
_CPU = struct.Struct("<BBBBII8x")
_BUS = struct.Struct("<BB6s")
_IOAPIC = struct.Struct("<BBBBI")
_INTSRC = struct.Struct("<BBHBBBB")


def _checksum(data: bytes | bytearray) -> int:
    return (-sum(data)) & 0xFF


def build(cpus: int, base: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer followed by the configuration table, checksummed, for `cpus` vCPUs."""
    if not 1 <= cpus <= MAX_CPUS:
        raise ConfigError(f"cpus {cpus}: the MP table describes 1 to {MAX_CPUS}")
    ioapic_id = cpus
    entries = []
    for index in range(cpus):
        flags = CPU_ENABLED | (CPU_BSP if index == 0 else 0)
        # signature: family 6; features: FPU and APIC on chip
        entries.append(_CPU.pack(0, index, APIC_VERSION, flags, 0x600, 0x201))
    entries.append(_BUS.pack(1, 0, b"ISA   "))
    entries.append(_IOAPIC.pack(2, ioapic_id, IOAPIC_VERSION, 1, IOAPIC_BASE))
    for irq in range(IOAPIC_PINS):
        # as the VM's GSI routing has it: ISA IRQ n on IOAPIC pin n, except IRQ0 (the PIT) on pin 2
        if irq == TIMER_IOAPIC_PIN:
            continue
        pin = TIMER_IOAPIC_PIN if irq == 0 else irq
        entries.append(_INTSRC.pack(3, INT_TYPE_INT, 0, 0, irq, ioapic_id, pin))
    entries.append(_INTSRC.pack(4, INT_TYPE_EXTINT, 0, 0, 0, 0, 0))      # LINT0 of the BSP: the PIC
    entries.append(_INTSRC.pack(4, INT_TYPE_NMI, 0, 0, 0, 0xFF, 1))      # LINT1 of every CPU: NMI
    body = b"".join(entries)
    table_addr = base + _FLOATING.size
    header = _HEADER.pack(b"PCMP", _HEADER.size + len(body), SPEC_REV, 0, b"VIRTKIT ", b"virtkit-vmm ", 0, 0,
                          len(entries), LAPIC_BASE, 0, 0, 0)
    table = bytearray(header + body)
    table[7] = _checksum(table)
    floating = bytearray(_FLOATING.pack(b"_MP_", table_addr, 1, SPEC_REV, 0, 0, b"\0" * 4))
    floating[10] = _checksum(floating)
    return bytes(floating + table)


def write(mem: GuestMemory, cpus: int) -> None:
    data = build(cpus)
    if MPTABLE_ADDR + len(data) > 0x100000:
        raise ConfigError(f"cpus {cpus}: the MP table does not fit below 1 MiB")
    mem.write(MPTABLE_ADDR, data)
