"""The KVM ABI for x86_64: ioctl numbers and the C structures they carry, as ctypes (linux/kvm.h, asm/kvm.h)."""

from __future__ import annotations

import ctypes as C

# _IOC encoding (asm-generic/ioctl.h): dir(2) | size(14) | type(8) | nr(8)
_NONE, _WRITE, _READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_NONE, nr, 0)


def _ior(nr: int, struct: type[C.Structure] | int) -> int:
    return _ioc(_READ, nr, struct if isinstance(struct, int) else C.sizeof(struct))


def _iow(nr: int, struct: type[C.Structure] | int) -> int:
    return _ioc(_WRITE, nr, struct if isinstance(struct, int) else C.sizeof(struct))


def _iowr(nr: int, struct: type[C.Structure] | int) -> int:
    return _ioc(_READ | _WRITE, nr, struct if isinstance(struct, int) else C.sizeof(struct))


u8, u16, u32, u64, s32 = C.c_uint8, C.c_uint16, C.c_uint32, C.c_uint64, C.c_int32


class Struct(C.Structure):
    """A KVM structure with a dict view (for snapshots) and a bytes round trip."""

    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> Struct:
        if len(data) != C.sizeof(cls):
            raise ValueError(f"{cls.__name__}: expected {C.sizeof(cls)} bytes, got {len(data)}")
        return cls.from_buffer_copy(data)


class UserspaceMemoryRegion(Struct):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64), ("memory_size", u64),
                ("userspace_addr", u64)]


class Regs(Struct):
    _fields_ = [(n, u64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10",
                                   "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class Segment(Struct):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8), ("present", u8), ("dpl", u8),
                ("db", u8), ("s", u8), ("l", u8), ("g", u8), ("avl", u8), ("unusable", u8), ("padding", u8)]


class Dtable(Struct):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


class Sregs(Struct):
    _fields_ = [("cs", Segment), ("ds", Segment), ("es", Segment), ("fs", Segment), ("gs", Segment),
                ("ss", Segment), ("tr", Segment), ("ldt", Segment), ("gdt", Dtable), ("idt", Dtable),
                ("cr0", u64), ("cr2", u64), ("cr3", u64), ("cr4", u64), ("cr8", u64), ("efer", u64),
                ("apic_base", u64), ("interrupt_bitmap", u64 * 4)]


class Fpu(Struct):
    _fields_ = [("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
                ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64), ("xmm", (u8 * 16) * 16),
                ("mxcsr", u32), ("pad2", u32)]


class LapicState(Struct):
    _fields_ = [("regs", u8 * 1024)]


class MsrEntry(Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


def msrs_struct(n: int) -> type[Struct]:
    class Msrs(Struct):
        _fields_ = [("nmsrs", u32), ("pad", u32), ("entries", MsrEntry * n)]
    return Msrs


class CpuidEntry2(Struct):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32), ("ecx", u32),
                ("edx", u32), ("padding", u32 * 3)]


KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1


def cpuid2_struct(n: int) -> type[Struct]:
    class Cpuid2(Struct):
        _fields_ = [("nent", u32), ("padding", u32), ("entries", CpuidEntry2 * n)]
    return Cpuid2


class IrqLevel(Struct):
    _fields_ = [("irq", u32), ("level", u32)]


class PitConfig(Struct):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class PitChannelState(Struct):
    _fields_ = [("count", u32), ("latched_count", u16), ("count_latched", u8), ("status_latched", u8),
                ("status", u8), ("read_state", u8), ("write_state", u8), ("write_latch", u8), ("rw_mode", u8),
                ("mode", u8), ("bcd", u8), ("gate", u8), ("count_load_time", C.c_int64)]


class PitState2(Struct):
    _fields_ = [("channels", PitChannelState * 3), ("flags", u32), ("reserved", u32 * 9)]


class Irqchip(Struct):
    _fields_ = [("chip_id", u32), ("pad", u32), ("chip", u8 * 512)]


class IrqRoutingIrqchip(C.Structure):
    _fields_ = [("irqchip", u32), ("pin", u32), ("pad", u8 * 24)]


class IrqRoutingEntry(Struct):
    _fields_ = [("gsi", u32), ("type", u32), ("flags", u32), ("pad", u32), ("irqchip", IrqRoutingIrqchip)]


def irq_routing_struct(n: int) -> type[Struct]:
    class IrqRouting(Struct):
        _fields_ = [("nr", u32), ("flags", u32), ("entries", IrqRoutingEntry * n)]
    return IrqRouting


KVM_IRQ_ROUTING_IRQCHIP = 1


class Irqfd(Struct):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class Ioeventfd(Struct):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", s32), ("flags", u32), ("pad", u8 * 36)]


class DirtyLog(Struct):
    _fields_ = [("slot", u32), ("padding1", u32), ("dirty_bitmap", u64)]


class ClockData(Struct):
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64), ("host_tsc", u64),
                ("pad", u32 * 4)]


class MpState(Struct):
    _fields_ = [("mp_state", u32)]


class VcpuEvents(Struct):
    _fields_ = [("raw", u8 * 64)]


class EnableCap(Struct):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


class MsrList(Struct):
    _fields_ = [("nmsrs", u32)]


class Xcrs(Struct):
    _fields_ = [("nr_xcrs", u32), ("flags", u32), ("xcrs", (u32 * 4) * 16), ("padding", u64 * 16)]


class Xsave(Struct):
    _fields_ = [("region", u32 * 1024)]


# kvm_run (the vCPU's shared page); the exit union sits at offset 32.
class _IoExit(C.Structure):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class _MmioExit(C.Structure):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class _FailEntry(C.Structure):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class _Internal(C.Structure):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class _SystemEvent(C.Structure):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class _ExitUnion(C.Union):
    _fields_ = [("io", _IoExit), ("mmio", _MmioExit), ("fail_entry", _FailEntry), ("internal", _Internal),
                ("system_event", _SystemEvent), ("padding", C.c_char * 256)]


class Run(C.Structure):
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8), ("flags", u16),
                ("cr8", u64), ("apic_base", u64), ("exit", _ExitUnion)]


# system ioctls
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, MsrList)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, 8)
# VM ioctls
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, DirtyLog)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, UserspaceMemoryRegion)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, 8)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, IrqLevel)
KVM_GET_IRQCHIP = _iowr(0x62, Irqchip)
KVM_SET_IRQCHIP = _ior(0x63, Irqchip)
KVM_SET_GSI_ROUTING = _iow(0x6A, 8)
KVM_IRQFD = _iow(0x76, Irqfd)
KVM_CREATE_PIT2 = _iow(0x77, PitConfig)
KVM_IOEVENTFD = _iow(0x79, Ioeventfd)
KVM_SET_CLOCK = _iow(0x7B, ClockData)
KVM_GET_CLOCK = _ior(0x7C, ClockData)
KVM_GET_PIT2 = _ior(0x9F, PitState2)
KVM_SET_PIT2 = _iow(0xA0, PitState2)
KVM_ENABLE_CAP = _iow(0xA3, EnableCap)
# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, Regs)
KVM_SET_REGS = _iow(0x82, Regs)
KVM_GET_SREGS = _ior(0x83, Sregs)
KVM_SET_SREGS = _iow(0x84, Sregs)
KVM_GET_MSRS = _iowr(0x88, 8)
KVM_SET_MSRS = _iow(0x89, 8)
KVM_GET_FPU = _ior(0x8C, Fpu)
KVM_SET_FPU = _iow(0x8D, Fpu)
KVM_GET_LAPIC = _ior(0x8E, LapicState)
KVM_SET_LAPIC = _iow(0x8F, LapicState)
KVM_SET_CPUID2 = _iow(0x90, 8)
KVM_GET_CPUID2 = _iowr(0x91, 8)
KVM_GET_MP_STATE = _ior(0x98, MpState)
KVM_SET_MP_STATE = _iow(0x99, MpState)
KVM_GET_VCPU_EVENTS = _ior(0x9F, VcpuEvents)
KVM_SET_VCPU_EVENTS = _iow(0xA0, VcpuEvents)
KVM_GET_XSAVE = _ior(0xA4, Xsave)
KVM_SET_XSAVE = _iow(0xA5, Xsave)
KVM_GET_XCRS = _ior(0xA6, Xcrs)
KVM_SET_XCRS = _iow(0xA7, Xcrs)

# capabilities (KVM_CHECK_EXTENSION)
KVM_CAP_IRQCHIP = 0
KVM_CAP_HLT = 1
KVM_CAP_USER_MEMORY = 3
KVM_CAP_SET_TSS_ADDR = 4
KVM_CAP_EXT_CPUID = 7
KVM_CAP_NR_VCPUS = 9
KVM_CAP_NR_MEMSLOTS = 10
KVM_CAP_PIT2 = 33
KVM_CAP_IRQFD = 32
KVM_CAP_IOEVENTFD = 36
KVM_CAP_ADJUST_CLOCK = 39
KVM_CAP_VCPU_EVENTS = 41
KVM_CAP_XSAVE = 55
KVM_CAP_XCRS = 56
KVM_CAP_IMMEDIATE_EXIT = 136
KVM_CAP_READONLY_MEM = 81
KVM_CAP_MAX_VCPUS = 66

# exit reasons
EXIT_REASONS = {
    0: "UNKNOWN", 1: "EXCEPTION", 2: "IO", 3: "HYPERCALL", 4: "DEBUG", 5: "HLT", 6: "MMIO",
    7: "IRQ_WINDOW_OPEN", 8: "SHUTDOWN", 9: "FAIL_ENTRY", 10: "INTR", 11: "SET_TPR", 12: "TPR_ACCESS",
    16: "NMI", 17: "INTERNAL_ERROR", 18: "OSI", 24: "SYSTEM_EVENT", 29: "IOAPIC_EOI", 30: "HYPERV",
}
EXIT_IO, EXIT_HLT, EXIT_MMIO, EXIT_SHUTDOWN, EXIT_FAIL_ENTRY, EXIT_INTR = 2, 5, 6, 8, 9, 10
EXIT_INTERNAL_ERROR, EXIT_SYSTEM_EVENT = 17, 24
EXIT_IO_IN, EXIT_IO_OUT = 0, 1
SYSTEM_EVENT_SHUTDOWN, SYSTEM_EVENT_RESET, SYSTEM_EVENT_CRASH = 1, 2, 3

KVM_MEM_LOG_DIRTY_PAGES = 1
KVM_MEM_READONLY = 2
KVM_IOEVENTFD_FLAG_DATAMATCH = 1
KVM_IOEVENTFD_FLAG_PIO = 2
KVM_IOEVENTFD_FLAG_DEASSIGN = 4
KVM_IRQFD_FLAG_DEASSIGN = 1
KVM_PIT_SPEAKER_DUMMY = 1
KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC = 0, 1, 2
KVM_MP_STATE_RUNNABLE = 0
