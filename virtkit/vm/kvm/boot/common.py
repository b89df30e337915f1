"""What every boot format shares: the BootPlan, where guest RAM may hold a kernel, the command line, the initrd.

Low memory below LOW_RESERVED_END belongs to the VMM's boot structures (GDT, IDT, hvm_start_info, zero page,
page tables, boot stack, command line): no kernel byte may land there, because cpu_setup.write_tables runs after
the kernel is loaded and would overwrite it.
"""

from __future__ import annotations

from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.layout import CMDLINE_ADDR, CMDLINE_MAX, E820_RAM, HIGH_MEMORY, MMIO_HOLE_START, PAGE, MiB
from virtkit.vm.kvm.memory import GuestMemory

LOW_RESERVED_END = CMDLINE_ADDR + CMDLINE_MAX
# The page tables end at 0xF000 and the command line starts at CMDLINE_ADDR: the 68 KiB gap between them is the
# boot stack (Linux switches to its own stack at once; the test guests use a few hundred bytes).
BOOT_STACK = CMDLINE_ADDR

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing stays out of virtkit-vmm's start
    from typing import Literal

    Mode = Literal["long64", "prot32"]


class BootPlan:
    """How to enter a loaded kernel: the Machine turns it into write_tables + setup_long_mode/setup_protected_mode.

    A plain class (equality and repr by field), not a dataclass: importing dataclasses costs virtkit-vmm ~7 ms.
    """

    __slots__ = ("mode", "entry", "stack", "boot_params", "kernel_range", "format", "initrd_range")

    def __init__(self, mode: Mode, entry: int, stack: int, boot_params: int, kernel_range: tuple[int, int],
                 format: str, initrd_range: tuple[int, int] | None = None) -> None:  # noqa: A002 - the field name
        self.mode = mode
        self.entry = entry
        self.stack = stack
        self.boot_params = boot_params      # RSI for long64 (the zero page; 0 for flat), EBX for prot32
        self.kernel_range = kernel_range    # [start, end) of guest RAM the kernel owns, its runtime footprint too
        self.format = format                # "bzimage", "elf" or "flat": what was actually loaded
        self.initrd_range = initrd_range

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BootPlan) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "BootPlan(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__) + ")"


def mib(size: int) -> int:
    """Whole MiB, rounded up (for messages: 'memory 64 MiB is too small for the kernel image of 68 MiB')."""
    return (size + MiB - 1) // MiB


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment if alignment > 1 else value


def ram_ranges(mem: GuestMemory) -> list[tuple[int, int]]:
    """[start, end) of the e820 RAM ranges below the 32-bit MMIO hole: the only RAM a boot-time kernel can reach.

    Both entry modes see at most 4 GiB (paging off, or cpu_setup's 4 GiB identity map), and the hole starts below
    4 GiB, so RAM above the hole is for the kernel to find in the e820 map, never to be loaded into.
    """
    ranges = []
    for addr, size, kind in mem.e820():
        if kind == E820_RAM and addr < MMIO_HOLE_START:
            ranges.append((addr, min(addr + size, MMIO_HOLE_START)))
    return ranges


def high_ram_end(mem: GuestMemory) -> int:
    """End of the RAM range that starts at 1 MiB: kernels, initrds and their footprints live in [1 MiB, this)."""
    for start, end in ram_ranges(mem):
        if start <= HIGH_MEMORY < end:
            return end
    raise BootError(f"memory {mib(mem.size)} MiB has no RAM at {HIGH_MEMORY:#x}, where kernels load")


def check_fits(mem: GuestMemory, start: int, end: int, what: str) -> None:
    """[start, end) must be guest RAM, above the boot structures and below the MMIO hole, or a BootError says why."""
    if start < LOW_RESERVED_END:
        raise BootError(f"{what} at {start:#x}..{end:#x} overlaps the boot structures below {LOW_RESERVED_END:#x} "
                        f"(GDT, page tables, zero page, command line)")
    if end > MMIO_HOLE_START:
        raise BootError(f"{what} at {start:#x}..{end:#x} reaches into the 32-bit MMIO hole at {MMIO_HOLE_START:#x}")
    ranges = ram_ranges(mem)
    if any(lo <= start and end <= hi for lo, hi in ranges):
        return
    if end > max(hi for _lo, hi in ranges):
        raise BootError(f"memory {mib(mem.size)} MiB is too small for the {what} of {mib(end - start)} MiB "
                        f"(it needs guest RAM up to {end:#x}, {mib(end)} MiB)")
    holes = ", ".join(f"{lo:#x}..{hi:#x}" for lo, hi in ranges)
    raise BootError(f"{what} at {start:#x}..{end:#x} is not inside one stretch of guest RAM (RAM: {holes})")


def encode_cmdline(cmdline: str, limit: int) -> bytes:
    """The command line as the guest reads it, without its NUL; `limit` is the longest the kernel accepts."""
    if not isinstance(cmdline, str):
        raise BootError(f"cmdline must be a string (got {type(cmdline).__name__})")
    if "\0" in cmdline:
        raise BootError("cmdline contains a NUL character: the kernel would see only the part before it")
    raw = cmdline.encode()
    limit = min(limit, CMDLINE_MAX - 1)
    if len(raw) > limit:
        raise BootError(f"cmdline is {len(raw)} bytes, longer than the kernel's limit of {limit} bytes")
    return raw


def write_cmdline(mem: GuestMemory, raw: bytes) -> int:
    """NUL-terminated at CMDLINE_ADDR, even when empty (every format points the kernel at it); returns its address."""
    mem.write(CMDLINE_ADDR, raw + b"\0")
    return CMDLINE_ADDR


def place_initrd(mem: GuestMemory, initrd: bytes | None, *, above: int, limit: int) -> tuple[int, int] | None:
    """[start, end) for the initrd: page-aligned, as high as possible below `limit` (an exclusive end) and the end of
    the RAM at 1 MiB, never below `above` (the kernel's footprint). High, as bootloaders do, so that the kernel's
    decompression and early allocations find the room just above themselves free.
    """
    if not initrd:
        return None
    top = min(limit, high_ram_end(mem))
    start = (top - len(initrd)) // PAGE * PAGE
    floor = align_up(max(above, HIGH_MEMORY), PAGE)
    if start < floor:
        room = max(top - floor, 0)
        raise BootError(f"initrd of {mib(len(initrd))} MiB does not fit: {room // 1024} KiB are free between the "
                        f"kernel's end {floor:#x} and {top:#x} (memory {mib(mem.size)} MiB)")
    return start, start + len(initrd)


_ZEROS = bytes(MiB)


def zero_fill(mem: GuestMemory, start: int, length: int) -> None:
    """Zero guest RAM a MiB at a time: a kernel's .bss can be large, and a zeroed copy of it need not exist."""
    done = 0
    while done < length:
        n = min(length - done, MiB)
        mem.write(start + done, _ZEROS[:n] if n < MiB else _ZEROS)
        done += n


def write_initrd(mem: GuestMemory, initrd: bytes | None, placed: tuple[int, int] | None) -> None:
    if initrd and placed is not None:
        mem.write(placed[0], initrd)
