"""A vCPU's state at entry: GDT, identity page tables, control registers, MSRs and LAPIC, for 64-bit or 32-bit entry."""

from __future__ import annotations

import struct

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.kvm import Vcpu
from virtkit.vm.kvm.layout import GDT_ADDR, IDT_ADDR, PD_ADDR, PDPT_ADDR, PML4_ADDR
from virtkit.vm.kvm.memory import GuestMemory

X86_CR0_PE, X86_CR0_ET, X86_CR0_NE, X86_CR0_PG = 0x1, 0x10, 0x20, 0x80000000
X86_CR4_PAE = 0x20
EFER_LME, EFER_LMA = 0x100, 0x400

# GDT: null, 64-bit code, data, TSS (as Linux's boot GDT: code at 0x08 is 32-bit for PVH, 0x10 64-bit code)
GDT_NULL, GDT_CODE32, GDT_CODE64, GDT_DATA, GDT_TSS = 0, 1, 2, 3, 4

MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP, MSR_IA32_SYSENTER_EIP = 0x174, 0x175, 0x176
MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SYSCALL_MASK, MSR_KERNEL_GS_BASE = (0xC0000081, 0xC0000082, 0xC0000083,
                                                                      0xC0000084, 0xC0000102)
MSR_IA32_TSC, MSR_IA32_MISC_ENABLE, MSR_MTRR_DEF_TYPE = 0x10, 0x1A0, 0x2FF
MSR_IA32_APICBASE = 0x1B
MISC_ENABLE_FAST_STRING = 1

APIC_LVT0, APIC_LVT1, APIC_SPIV = 0x350, 0x360, 0xF0
APIC_MODE_EXTINT, APIC_MODE_NMI = 0x7, 0x4


def _gdt_entry(flags: int, base: int, limit: int) -> int:
    return ((base & 0xFF000000) << 32) | ((flags & 0xF0FF) << 40) | ((limit & 0xF0000) << 32) \
        | ((base & 0xFFFFFF) << 16) | (limit & 0xFFFF)


GDT = [
    _gdt_entry(0, 0, 0),
    _gdt_entry(0xC09B, 0, 0xFFFFF),   # 32-bit code: G, D, present, execute/read, accessed
    _gdt_entry(0xA09B, 0, 0xFFFFF),   # 64-bit code: G, L, present
    _gdt_entry(0xC093, 0, 0xFFFFF),   # data: G, B, present, read/write, accessed
    _gdt_entry(0x808B, 0, 0xFFFFF),   # TSS (busy)
]


def _segment(index: int) -> abi.Segment:
    entry = GDT[index]
    flags = (entry >> 40) & 0xF0FF
    return abi.Segment(
        base=((entry >> 16) & 0xFFFFFF) | (((entry >> 56) & 0xFF) << 24),
        limit=(entry & 0xFFFF) | (((entry >> 48) & 0xF) << 16) if not (flags >> 15) & 1 else 0xFFFFFFFF,
        selector=index * 8, type=flags & 0xF, present=(flags >> 7) & 1, dpl=(flags >> 5) & 3,
        db=(flags >> 14) & 1, s=(flags >> 4) & 1, l=(flags >> 13) & 1, g=(flags >> 15) & 1, avl=(flags >> 12) & 1,
        unusable=0 if (flags >> 7) & 1 else 1,
    )


def write_tables(mem: GuestMemory, *, paging: bool) -> None:
    """GDT and an empty IDT; with paging, page tables identity-mapping the first 4 GiB in 2 MiB pages."""
    mem.write(GDT_ADDR, struct.pack(f"<{len(GDT)}Q", *GDT))
    mem.write(IDT_ADDR, b"\0" * 8)
    if not paging:
        return
    # Accessed and Dirty are set up front so the CPU never writes the tables back: the dirty log then shows
    # only pages the guest itself wrote.
    mem.write_u64(PML4_ADDR, PDPT_ADDR | 0x23)
    mem.write(PDPT_ADDR, struct.pack("<4Q", *[(PD_ADDR + i * 0x1000) | 0x23 for i in range(4)]))
    entries = [((i << 21) | 0xE3) for i in range(4 * 512)]  # present, writable, accessed, dirty, 2 MiB page
    mem.write(PD_ADDR, struct.pack(f"<{len(entries)}Q", *entries))


def setup_long_mode(vcpu: Vcpu, *, rip: int, rsp: int, rsi: int = 0) -> None:
    """64-bit entry: flat segments, paging on (PML4 at PML4_ADDR), interrupts off (the Linux 64-bit boot state)."""
    sregs = vcpu.get_sregs()
    code, data, tss = _segment(GDT_CODE64), _segment(GDT_DATA), _segment(GDT_TSS)
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = tss
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(GDT) * 8 - 1
    sregs.idt.base, sregs.idt.limit = IDT_ADDR, 7
    sregs.cr3 = PML4_ADDR
    sregs.cr4 |= X86_CR4_PAE
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE
    sregs.efer |= EFER_LME | EFER_LMA
    vcpu.set_sregs(sregs)
    vcpu.set_regs(abi.Regs(rip=rip, rsp=rsp, rbp=rsp, rsi=rsi, rflags=0x2))
    _common(vcpu)


def setup_protected_mode(vcpu: Vcpu, *, eip: int, ebx: int) -> None:
    """32-bit entry with paging off, as the PVH boot ABI asks (EBX = hvm_start_info)."""
    sregs = vcpu.get_sregs()
    code, data, tss = _segment(GDT_CODE32), _segment(GDT_DATA), _segment(GDT_TSS)
    tss.l = 0
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = tss
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(GDT) * 8 - 1
    sregs.idt.base, sregs.idt.limit = IDT_ADDR, 7
    sregs.cr0 = (sregs.cr0 | X86_CR0_PE | X86_CR0_ET) & ~X86_CR0_PG
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    vcpu.set_regs(abi.Regs(rip=eip, rbx=ebx, rflags=0x2))
    _common(vcpu)


def _common(vcpu: Vcpu) -> None:
    fpu = abi.Fpu(fcw=0x37F, mxcsr=0x1F80)
    vcpu.set_fpu(fpu)
    vcpu.set_msrs({
        MSR_IA32_SYSENTER_CS: 0, MSR_IA32_SYSENTER_ESP: 0, MSR_IA32_SYSENTER_EIP: 0,
        MSR_STAR: 0, MSR_CSTAR: 0, MSR_KERNEL_GS_BASE: 0, MSR_SYSCALL_MASK: 0, MSR_LSTAR: 0,
        MSR_IA32_TSC: 0, MSR_IA32_MISC_ENABLE: MISC_ENABLE_FAST_STRING,
    })
    setup_lapic(vcpu)


def setup_lapic(vcpu: Vcpu) -> None:
    """LINT0 as ExtINT (the PIC's output reaches the BSP) and LINT1 as NMI, software-enabled, as a BIOS leaves it."""
    raw = bytearray(bytes(vcpu.get_lapic()))

    def set_reg(offset: int, value: int) -> None:
        raw[offset:offset + 4] = struct.pack("<I", value)

    def get_reg(offset: int) -> int:
        return int(struct.unpack_from("<I", raw, offset)[0])

    set_reg(APIC_LVT0, (get_reg(APIC_LVT0) & ~0x700) | (APIC_MODE_EXTINT << 8))
    set_reg(APIC_LVT1, (get_reg(APIC_LVT1) & ~0x700) | (APIC_MODE_NMI << 8))
    set_reg(APIC_SPIV, get_reg(APIC_SPIV) | 0x100 | 0xFF)
    vcpu.set_lapic(abi.LapicState.from_buffer_copy(raw))
