"""Handles on /dev/kvm, a VM and a vCPU: every KVM ioctl the VMM issues goes through here."""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import mmap
import os

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.errors import KvmUnavailable, VmmError

KVM_DEVICE = "/dev/kvm"
REQUIRED_CAPS = {
    abi.KVM_CAP_IRQCHIP: "in-kernel irqchip",
    abi.KVM_CAP_USER_MEMORY: "user memory slots",
    abi.KVM_CAP_SET_TSS_ADDR: "TSS address",
    abi.KVM_CAP_EXT_CPUID: "CPUID2",
    abi.KVM_CAP_PIT2: "in-kernel PIT",
    abi.KVM_CAP_IRQFD: "irqfd",
    abi.KVM_CAP_IOEVENTFD: "ioeventfd",
    abi.KVM_CAP_IMMEDIATE_EXIT: "immediate_exit",
}


_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [C.c_int, C.c_ulong, C.c_ulong]
_libc.ioctl.restype = C.c_int


def _ioctl(fd: int, request: int, arg: int | C.Structure | bytearray = 0, what: str = "") -> int:
    try:
        if isinstance(arg, int):
            # an unsigned long argument (addresses above 2 GiB): fcntl.ioctl would take it as a C int
            ret = _libc.ioctl(fd, request, arg)
            if ret < 0:
                err = C.get_errno()
                raise OSError(err, os.strerror(err))
            return int(ret)
        return fcntl.ioctl(fd, request, arg, True)  # type: ignore[call-overload]
    except OSError as exc:
        raise VmmError(f"KVM ioctl {what or hex(request)} failed: {os.strerror(exc.errno or 0)}") from exc


class Kvm:
    """The system fd: API version, capabilities, supported CPUID, MSR list."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailable(f"{path} does not exist: this host has no KVM (load kvm_intel/kvm_amd)") from None
        except PermissionError:
            raise KvmUnavailable(f"{path}: permission denied (run as root or join the kvm group)") from None
        version = _ioctl(self.fd, abi.KVM_GET_API_VERSION, what="KVM_GET_API_VERSION")
        if version != 12:
            os.close(self.fd)
            raise KvmUnavailable(f"{path}: KVM API version {version}, expected 12")
        missing = [name for cap, name in REQUIRED_CAPS.items() if not self.check(cap)]
        if missing:
            os.close(self.fd)
            raise KvmUnavailable(f"{path} lacks capabilities the VMM needs: {', '.join(missing)}")
        self.vcpu_mmap_size = _ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE, what="KVM_GET_VCPU_MMAP_SIZE")

    def check(self, cap: int) -> int:
        try:
            return fcntl.ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap)
        except OSError:
            return 0

    def supported_cpuid(self) -> list[abi.CpuidEntry2]:
        n = 256
        while True:
            buf = abi.cpuid2_struct(n)()
            buf.nent = n
            try:
                fcntl.ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, buf, True)  # type: ignore[call-overload]
            except OSError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise VmmError(f"KVM_GET_SUPPORTED_CPUID failed: {os.strerror(exc.errno or 0)}") from exc
            return [abi.CpuidEntry2.from_buffer_copy(bytes(buf.entries[i])) for i in range(buf.nent)]

    def msr_index_list(self) -> list[int]:
        header = bytearray(4 + 4 * 1024)
        header[0:4] = (1024).to_bytes(4, "little")
        _ioctl(self.fd, abi.KVM_GET_MSR_INDEX_LIST, header, "KVM_GET_MSR_INDEX_LIST")
        n = int.from_bytes(header[0:4], "little")
        return [int.from_bytes(header[4 + 4 * i:8 + 4 * i], "little") for i in range(n)]

    def create_vm(self) -> Vm:
        fd = _ioctl(self.fd, abi.KVM_CREATE_VM, 0, "KVM_CREATE_VM")
        return Vm(self, fd)

    def close(self) -> None:
        os.close(self.fd)


class Vm:
    """A VM fd: memory slots, irqchip, PIT, irq lines, irqfd, ioeventfd, dirty log, clock."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd

    def set_memory_region(self, slot: int, gpa: int, size: int, host_addr: int, flags: int = 0) -> None:
        region = abi.UserspaceMemoryRegion(slot=slot, flags=flags, guest_phys_addr=gpa, memory_size=size,
                                           userspace_addr=host_addr)
        _ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, region, f"KVM_SET_USER_MEMORY_REGION slot {slot}")

    def set_tss_addr(self, addr: int) -> None:
        _ioctl(self.fd, abi.KVM_SET_TSS_ADDR, addr, "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        buf = bytearray(addr.to_bytes(8, "little"))
        _ioctl(self.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, buf, "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        _ioctl(self.fd, abi.KVM_CREATE_IRQCHIP, 0, "KVM_CREATE_IRQCHIP")

    def set_gsi_routing(self, routes: list[tuple[int, int, int]]) -> None:
        """(gsi, irqchip, pin) entries; a GSI listed twice reaches both chips (the PIC and the IOAPIC)."""
        table = abi.irq_routing_struct(len(routes))()
        table.nr = len(routes)
        for i, (gsi, chip, pin) in enumerate(routes):
            entry = table.entries[i]
            entry.gsi, entry.type = gsi, abi.KVM_IRQ_ROUTING_IRQCHIP
            entry.irqchip.irqchip, entry.irqchip.pin = chip, pin
        _ioctl(self.fd, abi.KVM_SET_GSI_ROUTING, table, "KVM_SET_GSI_ROUTING")

    def create_pit2(self) -> None:
        _ioctl(self.fd, abi.KVM_CREATE_PIT2, abi.PitConfig(flags=abi.KVM_PIT_SPEAKER_DUMMY), "KVM_CREATE_PIT2")

    def irq_line(self, irq: int, level: int) -> None:
        _ioctl(self.fd, abi.KVM_IRQ_LINE, abi.IrqLevel(irq=irq, level=level), "KVM_IRQ_LINE")

    def irqfd(self, eventfd: int, gsi: int, deassign: bool = False) -> None:
        req = abi.Irqfd(fd=eventfd, gsi=gsi, flags=abi.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0)
        _ioctl(self.fd, abi.KVM_IRQFD, req, "KVM_IRQFD")

    def ioeventfd(self, eventfd: int, addr: int, length: int, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False) -> None:
        flags = (abi.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (abi.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= abi.KVM_IOEVENTFD_FLAG_DATAMATCH
        req = abi.Ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=eventfd, flags=flags)
        _ioctl(self.fd, abi.KVM_IOEVENTFD, req, "KVM_IOEVENTFD")

    def dirty_log(self, slot: int, npages: int) -> bytearray:
        bitmap = (C.c_uint64 * ((npages + 63) // 64))()
        req = abi.DirtyLog(slot=slot, dirty_bitmap=C.addressof(bitmap))
        _ioctl(self.fd, abi.KVM_GET_DIRTY_LOG, req, f"KVM_GET_DIRTY_LOG slot {slot}")
        return bytearray(bytes(bitmap))

    def get_irqchip(self, chip_id: int) -> abi.Irqchip:
        chip = abi.Irqchip(chip_id=chip_id)
        _ioctl(self.fd, abi.KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        return chip

    def set_irqchip(self, chip: abi.Irqchip) -> None:
        _ioctl(self.fd, abi.KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP")

    def get_pit2(self) -> abi.PitState2:
        state = abi.PitState2()
        _ioctl(self.fd, abi.KVM_GET_PIT2, state, "KVM_GET_PIT2")
        return state

    def set_pit2(self, state: abi.PitState2) -> None:
        _ioctl(self.fd, abi.KVM_SET_PIT2, state, "KVM_SET_PIT2")

    def get_clock(self) -> abi.ClockData:
        clock = abi.ClockData()
        _ioctl(self.fd, abi.KVM_GET_CLOCK, clock, "KVM_GET_CLOCK")
        return clock

    def set_clock(self, clock: abi.ClockData) -> None:
        _ioctl(self.fd, abi.KVM_SET_CLOCK, abi.ClockData(clock=clock.clock), "KVM_SET_CLOCK")

    def create_vcpu(self, index: int) -> Vcpu:
        fd = _ioctl(self.fd, abi.KVM_CREATE_VCPU, index, f"KVM_CREATE_VCPU {index}")
        return Vcpu(self, fd, index)

    def close(self) -> None:
        os.close(self.fd)


class Vcpu:
    """A vCPU fd and its mmapped kvm_run page: registers, MSRs, CPUID, LAPIC, run."""

    def __init__(self, vm: Vm, fd: int, index: int) -> None:
        self.vm = vm
        self.fd = fd
        self.index = index
        self._map = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_page = memoryview(self._map)
        self.run_struct = abi.Run.from_buffer(self._map)

    def run(self) -> None:
        """Enter the guest until the next exit; EINTR (a signal, immediate_exit) comes back as an INTR exit."""
        try:
            fcntl.ioctl(self.fd, abi.KVM_RUN, 0)
        except InterruptedError:
            self.run_struct.exit_reason = abi.EXIT_INTR
        except OSError as exc:
            # EAGAIN: an application processor woke from its wait for INIT/SIPI; it is entered again
            if exc.errno in (errno.EINTR, errno.EAGAIN):
                self.run_struct.exit_reason = abi.EXIT_INTR
            else:
                raise VmmError(f"KVM_RUN on vCPU {self.index} failed: {os.strerror(exc.errno or 0)}") from exc

    def _get(self, request: int, struct: type[abi.Struct], what: str) -> abi.Struct:
        value = struct()
        _ioctl(self.fd, request, value, what)
        return value

    def get_regs(self) -> abi.Regs:
        return self._get(abi.KVM_GET_REGS, abi.Regs, "KVM_GET_REGS")  # type: ignore[return-value]

    def set_regs(self, regs: abi.Regs) -> None:
        _ioctl(self.fd, abi.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self) -> abi.Sregs:
        return self._get(abi.KVM_GET_SREGS, abi.Sregs, "KVM_GET_SREGS")  # type: ignore[return-value]

    def set_sregs(self, sregs: abi.Sregs) -> None:
        _ioctl(self.fd, abi.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self) -> abi.Fpu:
        return self._get(abi.KVM_GET_FPU, abi.Fpu, "KVM_GET_FPU")  # type: ignore[return-value]

    def set_fpu(self, fpu: abi.Fpu) -> None:
        _ioctl(self.fd, abi.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_lapic(self) -> abi.LapicState:
        return self._get(abi.KVM_GET_LAPIC, abi.LapicState, "KVM_GET_LAPIC")  # type: ignore[return-value]

    def set_lapic(self, lapic: abi.LapicState) -> None:
        _ioctl(self.fd, abi.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def get_mp_state(self) -> abi.MpState:
        return self._get(abi.KVM_GET_MP_STATE, abi.MpState, "KVM_GET_MP_STATE")  # type: ignore[return-value]

    def set_mp_state(self, state: abi.MpState) -> None:
        _ioctl(self.fd, abi.KVM_SET_MP_STATE, state, "KVM_SET_MP_STATE")

    def get_vcpu_events(self) -> abi.VcpuEvents:
        return self._get(abi.KVM_GET_VCPU_EVENTS, abi.VcpuEvents, "KVM_GET_VCPU_EVENTS")  # type: ignore[return-value]

    def set_vcpu_events(self, events: abi.VcpuEvents) -> None:
        _ioctl(self.fd, abi.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = abi.msrs_struct(len(indices))()
        buf.nmsrs = len(indices)
        for i, index in enumerate(indices):
            buf.entries[i].index = index
        got = fcntl.ioctl(self.fd, abi.KVM_GET_MSRS, buf, True)  # type: ignore[call-overload]
        return {buf.entries[i].index: buf.entries[i].data for i in range(got)}

    def set_msrs(self, values: dict[int, int]) -> None:
        buf = abi.msrs_struct(len(values))()
        buf.nmsrs = len(values)
        for i, (index, data) in enumerate(values.items()):
            buf.entries[i].index = index
            buf.entries[i].data = data
        done = _ioctl(self.fd, abi.KVM_SET_MSRS, buf, "KVM_SET_MSRS")
        if done != len(values):
            bad = list(values)[done]
            raise VmmError(f"KVM_SET_MSRS: MSR {bad:#x} was refused")

    def set_cpuid(self, entries: list[abi.CpuidEntry2]) -> None:
        buf = abi.cpuid2_struct(len(entries))()
        buf.nent = len(entries)
        for i, entry in enumerate(entries):
            buf.entries[i] = entry
        _ioctl(self.fd, abi.KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def get_cpuid(self, max_entries: int = 256) -> list[abi.CpuidEntry2]:
        buf = abi.cpuid2_struct(max_entries)()
        buf.nent = max_entries
        _ioctl(self.fd, abi.KVM_GET_CPUID2, buf, "KVM_GET_CPUID2")
        return [abi.CpuidEntry2.from_buffer_copy(bytes(buf.entries[i])) for i in range(buf.nent)]

    def close(self) -> None:
        del self.run_struct
        self.run_page.release()
        self._map.close()
        os.close(self.fd)
