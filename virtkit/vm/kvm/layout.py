"""Where things live in guest-physical memory and on the buses (one x86 layout, as Firecracker's and QEMU microvm's)."""

from __future__ import annotations

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
PAGE = 4096

# low memory: boot structures
GDT_ADDR = 0x500
IDT_ADDR = 0x520
PVH_START_INFO = 0x6000          # hvm_start_info for the PVH entry
PVH_MEMMAP = 0x6040              # its memory map entries
ZERO_PAGE = 0x7000               # Linux boot_params
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000                 # four page directories: identity map of the first 4 GiB in 2 MiB pages
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000            # 64 KiB, well above Linux's 2 KiB default
EBDA_START = 0x9FC00             # RAM below this is usable, the rest up to 1 MiB is the legacy ROM area
HIGH_MEMORY = 0x100000           # kernels load at 1 MiB
DEFAULT_LOAD_ADDR = 0x100000

# the 32-bit MMIO hole: no RAM from 3 GiB to 4 GiB
MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB
VIRTIO_MMIO_BASE = 0xD0000000    # virtio-mmio devices, one 4 KiB window each
VIRTIO_MMIO_SIZE = 0x1000
VIRTIO_IRQ_BASE = 5              # GSIs 5.. (4 is COM1, 1 the i8042 keyboard)
ROM_ADDR = 0xFFFFF000            # a read-only slot: the VMM's identification (guest writes exit, never land)
ROM_SIGNATURE = b"virtkit-vmm\0"
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000
LAPIC_BASE = 0xFEE00000
IOAPIC_BASE = 0xFEC00000

# I/O ports
COM1_PORT, COM1_IRQ = 0x3F8, 4
I8042_DATA, I8042_CMD = 0x60, 0x64
EXIT_PORT = 0xF4                 # a byte written here ends the VM; it becomes virtkit-vmm's exit status

E820_RAM, E820_RESERVED = 1, 2
IOAPIC_PINS = 24
TIMER_IOAPIC_PIN = 2             # ISA IRQ0 (the PIT) reaches IOAPIC pin 2, as on PCs (ACPI's interrupt override)


def gsi_routes() -> list[tuple[int, int, int]]:
    """(gsi, irqchip, pin): GSIs 0-15 reach the PICs and the IOAPIC, 16-23 the IOAPIC alone; GSI 0 on pin 2."""
    master, slave, ioapic = 0, 1, 2
    routes = []
    for gsi in range(IOAPIC_PINS):
        if gsi < 16 and gsi != 2:  # IRQ2 is the slave PIC's cascade, never a device line
            routes.append((gsi, master if gsi < 8 else slave, gsi % 8))
        if gsi != TIMER_IOAPIC_PIN:
            routes.append((gsi, ioapic, TIMER_IOAPIC_PIN if gsi == 0 else gsi))
    return routes
