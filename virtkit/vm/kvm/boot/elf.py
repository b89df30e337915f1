"""Loading an ELF64 kernel (vmlinux): PT_LOAD segments at their physical addresses, entered by PVH when it can.

With a XEN_ELFNOTE_PHYS32_ENTRY note the kernel is entered as the PVH boot ABI says (xen/include/public/
arch-x86/hvm/start_info.h): 32-bit protected mode, paging off, EBX = a struct hvm_start_info at PVH_START_INFO
whose memory map, command line and module list (the initrd) virtkit builds. Without the note, the ELF's own entry
point is entered in 64-bit long mode with RSI = a zero page, as a 64-bit bzImage entry would be (Linux's vmlinux
puts the physical address of startup_64 in e_entry).
"""

from __future__ import annotations

import struct

from virtkit.vm.kvm.boot.common import (
    BOOT_STACK,
    BootPlan,
    check_fits,
    encode_cmdline,
    place_initrd,
    write_cmdline,
    write_initrd,
    zero_fill,
)
from virtkit.vm.kvm.boot.zeropage import build_zero_page
from virtkit.vm.kvm.errors import BootError
from virtkit.vm.kvm.layout import CMDLINE_MAX, HIGH_MEMORY, MMIO_HOLE_START, PVH_MEMMAP, PVH_START_INFO, ZERO_PAGE
from virtkit.vm.kvm.memory import GuestMemory

ELF_MAGIC = b"\x7fELF"
ELFCLASS64, ELFDATA2LSB, EM_X86_64 = 2, 1, 62
ET_EXEC, ET_DYN = 2, 3
PT_LOAD, PT_NOTE = 1, 4
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")           # Elf64_Phdr
NHDR = struct.Struct("<III")                # Elf64_Nhdr: namesz, descsz, type

XEN_ELFNOTE_PHYS32_ENTRY = 18
XEN_NOTE_NAME = b"Xen"

XEN_HVM_START_MAGIC_VALUE = 0x336EC578
HVM_START_INFO = struct.Struct("<IIIIQQQQII")   # magic, version, flags, nr_modules, modlist, cmdline, rsdp,
#                                                 memmap_paddr, memmap_entries, reserved
HVM_MEMMAP_ENTRY = struct.Struct("<QQII")       # addr, size, type, reserved
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")      # paddr, size, cmdline_paddr, reserved
HVM_START_INFO_VERSION = 1                      # the version that carries the memory map


class Segment:
    """One PT_LOAD segment (plain classes here: dataclasses would cost virtkit-vmm's start ~7 ms)."""

    __slots__ = ("offset", "paddr", "filesz", "memsz")

    def __init__(self, offset: int, paddr: int, filesz: int, memsz: int) -> None:
        self.offset, self.paddr, self.filesz, self.memsz = offset, paddr, filesz, memsz


class ElfKernel:
    __slots__ = ("entry", "pvh_entry", "segments")

    def __init__(self, entry: int, pvh_entry: int | None, segments: list[Segment]) -> None:
        self.entry = entry                # e_entry
        self.pvh_entry = pvh_entry        # XEN_ELFNOTE_PHYS32_ENTRY, when the kernel has one
        self.segments = segments


def _aligned4(n: int) -> int:
    return (n + 3) & ~3


def _pvh_entry(image: bytes, offset: int, size: int) -> int | None:
    """The PHYS32_ENTRY address in one PT_NOTE segment, if the Xen notes there carry it."""
    pos, end = offset, offset + size
    while pos + NHDR.size <= end:
        namesz, descsz, ntype = NHDR.unpack_from(image, pos)
        name_at = pos + NHDR.size
        desc_at = name_at + _aligned4(namesz)
        nxt = desc_at + _aligned4(descsz)
        if nxt > end:
            raise BootError(f"ELF note at file offset {pos:#x} runs past the end of its PT_NOTE segment")
        if image[name_at:name_at + namesz].rstrip(b"\0") == XEN_NOTE_NAME and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
            # Linux writes it as a 32-bit .long in some versions and as a 64-bit pointer-sized value in others
            if descsz not in (4, 8):
                raise BootError(f"ELF PVH entry note has a {descsz}-byte value, expected 4 or 8")
            value = int.from_bytes(image[desc_at:desc_at + descsz], "little")
            if value >= 1 << 32:
                raise BootError(f"ELF PVH entry {value:#x} is above 4 GiB: it must be a 32-bit physical address")
            return value
        pos = nxt
    return None


def parse_elf(image: bytes) -> ElfKernel:
    """Headers, loadable segments and the PVH entry of an ELF64 x86-64 kernel, or a BootError saying what is off."""
    if len(image) < EHDR.size:
        raise BootError(f"kernel image is too small for an ELF64 file: {len(image)} bytes")
    ident, e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize, e_phentsize, e_phnum, *_ = \
        EHDR.unpack_from(image)
    if ident[:4] != ELF_MAGIC:
        raise BootError("not an ELF file: no \\x7fELF magic")
    if ident[4] != ELFCLASS64:
        raise BootError("ELF kernel is 32-bit (ELFCLASS32): only ELF64 kernels are loaded")
    if ident[5] != ELFDATA2LSB:
        raise BootError("ELF kernel is big-endian: an x86-64 kernel is little-endian")
    if e_machine != EM_X86_64:
        raise BootError(f"ELF kernel is for machine {e_machine}, not x86-64 ({EM_X86_64})")
    if e_type not in (ET_EXEC, ET_DYN):
        raise BootError(f"ELF file of type {e_type} is not an executable kernel")
    if e_phentsize != PHDR.size or e_phoff + e_phnum * PHDR.size > len(image):
        raise BootError("ELF program header table is truncated or malformed")

    segments: list[Segment] = []
    pvh_entry = None
    for i in range(e_phnum):
        p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align = \
            PHDR.unpack_from(image, e_phoff + i * PHDR.size)
        if p_offset + p_filesz > len(image):
            raise BootError(f"ELF segment {i} is truncated: it needs file bytes up to {p_offset + p_filesz:#x}, "
                            f"the file has {len(image):#x}")
        if p_type == PT_NOTE and pvh_entry is None:
            pvh_entry = _pvh_entry(image, p_offset, p_filesz)
        elif p_type == PT_LOAD and p_memsz:
            if p_filesz > p_memsz:
                raise BootError(f"ELF segment {i} has more file bytes ({p_filesz:#x}) than memory ({p_memsz:#x})")
            segments.append(Segment(p_offset, p_paddr, p_filesz, p_memsz))
    if not segments:
        raise BootError("ELF kernel has no loadable (PT_LOAD) segment")
    segments.sort(key=lambda s: s.paddr)
    for a, b in zip(segments, segments[1:], strict=False):
        if a.paddr + a.memsz > b.paddr:
            raise BootError(f"ELF segments at {a.paddr:#x} and {b.paddr:#x} overlap")
    return ElfKernel(entry=e_entry, pvh_entry=pvh_entry, segments=segments)


def _check_entry(kernel: ElfKernel, address: int, what: str) -> None:
    if not any(s.paddr <= address < s.paddr + s.filesz for s in kernel.segments):
        raise BootError(f"ELF {what} {address:#x} is not inside any loaded segment (physical addresses "
                        f"{kernel.segments[0].paddr:#x}..{kernel.segments[-1].paddr + kernel.segments[-1].memsz:#x})")


def build_start_info(mem: GuestMemory, *, cmdline_addr: int, initrd: tuple[int, int] | None) -> bytes:
    """hvm_start_info (version 1) at PVH_START_INFO followed by its memory map at PVH_MEMMAP and module list after it.

    Returns the bytes from PVH_START_INFO on, ready to be written there; rsdp_paddr stays 0 (no ACPI tables).
    """
    memmap = b"".join(HVM_MEMMAP_ENTRY.pack(addr, size, kind, 0) for addr, size, kind in mem.e820())
    modlist_addr = PVH_MEMMAP + len(memmap)     # 24-byte entries keep it 8-byte aligned
    modlist = b"" if initrd is None else HVM_MODLIST_ENTRY.pack(initrd[0], initrd[1] - initrd[0], 0, 0)
    if modlist_addr + len(modlist) > ZERO_PAGE:
        raise BootError(f"the PVH memory map ({len(memmap) // HVM_MEMMAP_ENTRY.size} entries) does not fit below "
                        f"the zero page at {ZERO_PAGE:#x}")
    info = HVM_START_INFO.pack(XEN_HVM_START_MAGIC_VALUE, HVM_START_INFO_VERSION, 0, 1 if modlist else 0,
                               modlist_addr if modlist else 0, cmdline_addr, 0, PVH_MEMMAP,
                               len(memmap) // HVM_MEMMAP_ENTRY.size, 0)
    gap = PVH_MEMMAP - PVH_START_INFO - len(info)
    return info + b"\0" * gap + memmap + modlist


def load_elf(mem: GuestMemory, image: bytes, *, cmdline: str, initrd: bytes | None, load_addr: int | None,
             entry: int | None) -> BootPlan:
    if load_addr is not None or entry is not None:
        raise BootError("load_addr/entry: an ELF kernel loads each segment at its own physical address and starts "
                        "at its own entry; they are for flat images")
    kernel = parse_elf(image)
    kernel_range = (kernel.segments[0].paddr, kernel.segments[-1].paddr + kernel.segments[-1].memsz)
    if kernel_range[0] >= HIGH_MEMORY:
        # the usual case, all of it above 1 MiB: one check, whose message names the memory the whole kernel needs
        check_fits(mem, *kernel_range, "kernel image")
    for seg in kernel.segments:
        check_fits(mem, seg.paddr, seg.paddr + seg.memsz, f"ELF segment at {seg.paddr:#x}")
    if kernel.pvh_entry is not None:
        _check_entry(kernel, kernel.pvh_entry, "PVH entry")
    else:
        _check_entry(kernel, kernel.entry, "entry point")
    raw_cmdline = encode_cmdline(cmdline, CMDLINE_MAX - 1)
    # the initrd must stay below 4 GiB for a 32-bit entry: the RAM below the MMIO hole always is
    placed = place_initrd(mem, initrd, above=kernel_range[1], limit=MMIO_HOLE_START)

    # everything is checked: only now is guest memory written
    view = memoryview(image)
    for seg in kernel.segments:
        mem.write(seg.paddr, view[seg.offset:seg.offset + seg.filesz])
        if seg.memsz > seg.filesz:      # .bss: guest memory may not be fresh, so zero it rather than trust it
            zero_fill(mem, seg.paddr + seg.filesz, seg.memsz - seg.filesz)
    cmdline_addr = write_cmdline(mem, raw_cmdline)
    write_initrd(mem, initrd, placed)
    if kernel.pvh_entry is not None:
        mem.write(PVH_START_INFO, build_start_info(mem, cmdline_addr=cmdline_addr, initrd=placed))
        # the PVH ABI gives the kernel no stack: its 32-bit entry sets one up before any push
        return BootPlan(mode="prot32", entry=kernel.pvh_entry, stack=BOOT_STACK, boot_params=PVH_START_INFO,
                        kernel_range=kernel_range, format="elf", initrd_range=placed)
    mem.write(ZERO_PAGE, build_zero_page(mem, cmdline_addr=cmdline_addr, cmdline_limit=CMDLINE_MAX - 1,
                                         initrd=placed))
    return BootPlan(mode="long64", entry=kernel.entry, stack=BOOT_STACK, boot_params=ZERO_PAGE,
                    kernel_range=kernel_range, format="elf", initrd_range=placed)
