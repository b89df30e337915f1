"""Loading a flat image: raw 64-bit code copied to a load address and entered there in long mode.

The contract: the image is loaded at `load_addr` (default DEFAULT_LOAD_ADDR, 1 MiB) and entered at `entry`
(default: the load address, and always inside the image) in 64-bit long mode with the 4 GiB identity map,
RSP = the load address rounded down to 16 bytes (the stack grows down from just below the image; FLAT_STACK bytes
are kept clear of the boot structures for it), RSI = 0 and every other general register 0.

The command line is still written at CMDLINE_ADDR and a zero page (synthetic header, cmd_line_ptr, e820 map,
initrd) at ZERO_PAGE: it costs nothing, and a test program that wants them finds them at those fixed addresses.
RSI stays 0 so that a flat program starts from a fully known register state rather than one that depends on
what else was loaded.
"""

from __future__ import annotations

from virtkit.vm.kvm.boot.common import (
    LOW_RESERVED_END,
    BootPlan,
    check_fits,
    encode_cmdline,
    place_initrd,
    write_cmdline,
    write_initrd,
)
from virtkit.vm.kvm.boot.zeropage import build_zero_page
from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.layout import CMDLINE_MAX, DEFAULT_LOAD_ADDR, MMIO_HOLE_START, ZERO_PAGE, KiB
from virtkit.vm.kvm.memory import GuestMemory

FLAT_STACK = 64 * KiB
FLAT_MIN_LOAD = LOW_RESERVED_END + FLAT_STACK


def load_flat(mem: GuestMemory, image: bytes, *, cmdline: str, initrd: bytes | None, load_addr: int | None,
              entry: int | None) -> BootPlan:
    if not image:
        raise BootError("flat image is empty")
    load = DEFAULT_LOAD_ADDR if load_addr is None else load_addr
    if load < FLAT_MIN_LOAD:
        raise BootError(f"load_addr {load:#x} is too low for a flat image: below {FLAT_MIN_LOAD:#x} lie the boot "
                        f"structures and the {FLAT_STACK // KiB} KiB stack under the image")
    end = load + len(image)
    check_fits(mem, load, end, "flat image")
    start = load if entry is None else entry
    if not load <= start < end:
        raise BootError(f"entry {start:#x} is outside the flat image loaded at {load:#x}..{end:#x}")
    raw_cmdline = encode_cmdline(cmdline, CMDLINE_MAX - 1)
    placed = place_initrd(mem, initrd, above=end, limit=MMIO_HOLE_START)

    mem.write(load, image)
    cmdline_addr = write_cmdline(mem, raw_cmdline)
    write_initrd(mem, initrd, placed)
    mem.write(ZERO_PAGE, build_zero_page(mem, cmdline_addr=cmdline_addr, cmdline_limit=CMDLINE_MAX - 1,
                                         initrd=placed))
    return BootPlan(mode="long64", entry=start, stack=load & ~0xF, boot_params=0, kernel_range=(load, end),
                    format="flat", initrd_range=placed)
