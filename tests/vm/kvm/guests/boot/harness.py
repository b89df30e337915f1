"""Building the boot test guests (gcc, ld, objcopy) and running one under KVM until it writes its status byte.

The run loop is the smallest VMM that boot needs: a VM with irqchip, PIT and TSS as the Machine makes it, the
kernel loaded by load_kernel, the vCPU set up from the plan, and KVM_RUN until port 0xf4; bytes written to COM1's
data port are collected instead of emulating a UART.
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from virtkit.vm.kvm import abi, cpu_setup
from virtkit.vm.kvm.boot import BootPlan, load_kernel
from virtkit.vm.kvm.kvm import Kvm, Vcpu
from virtkit.vm.kvm.layout import COM1_PORT, EXIT_PORT, IDENTITY_MAP_ADDR, TSS_ADDR
from virtkit.vm.kvm.memory import GuestMemory

SOURCES = Path(__file__).parent
CFLAGS = ["-m64", "-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-mno-red-zone", "-mgeneral-regs-only",
          "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fcf-protection=none", "-Wall", "-Wextra",
          "-Werror", f"-I{SOURCES}"]
LDFLAGS = ["-nostdlib", "-static", "-z", "max-page-size=0x1000", "-z", "noexecstack", "--build-id=none",
           "--no-warn-rwx-segments"]
MiB = 1 << 20


def _run(argv: list[str], cwd: Path) -> None:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{proc.stderr}")


def build_guests(out: Path) -> dict[str, bytes]:
    """bzImage (setup header + 64-bit entry), linux64.elf (the same kernel as an ELF, no PVH note), pvh.elf."""
    for name in ("linux64.c", "pvh.c", "linux64_entry.S", "bzimage_header.S", "pvh_entry.S"):
        _run(["gcc", *CFLAGS, "-c", str(SOURCES / name), "-o", name.rsplit(".", 1)[0] + ".o"], out)
    _run(["ld", *LDFLAGS, "-T", str(SOURCES / "bzimage.ld"), "-o", "bz.elf", "bzimage_header.o", "linux64_entry.o",
          "linux64.o"], out)
    _run(["objcopy", "-O", "binary", "bz.elf", "bzImage"], out)
    _run(["ld", *LDFLAGS, "-T", str(SOURCES / "linux64_elf.ld"), "-o", "linux64.elf", "linux64_entry.o",
          "linux64.o"], out)
    _run(["ld", *LDFLAGS, "-T", str(SOURCES / "pvh.ld"), "-o", "pvh.elf", "pvh_entry.o", "pvh.o"], out)
    return {name: (out / name).read_bytes() for name in ("bzImage", "linux64.elf", "pvh.elf")}


@dataclass
class GuestRun:
    status: int
    serial: bytes
    plan: BootPlan
    e820: list[tuple[int, int, int]]


class GuestTimeout(Exception):
    pass


def _alarm(_signum: int, _frame: FrameType | None) -> None:
    # raised from the handler, so KVM_RUN's EINTR ends the run instead of being retried
    raise GuestTimeout


def _next_exit(vcpu: Vcpu) -> tuple[int, int, bytes]:
    """(exit reason, port, bytes written) of the next exit; plain values, so no view of kvm_run outlives the vCPU."""
    vcpu.run()
    run = vcpu.run_struct
    if run.exit_reason != abi.EXIT_IO:
        return run.exit_reason, 0, b""
    io = run.exit.io
    if io.direction != abi.EXIT_IO_OUT:
        return run.exit_reason, -1, b""         # the guests read no port: an IN is answered with whatever is there
    return run.exit_reason, io.port, bytes(vcpu.run_page[io.data_offset:io.data_offset + io.size * io.count])


def run_guest(image: bytes, fmt: str = "auto", *, cmdline: str = "", initrd: bytes | None = None,
              load_addr: int | None = None, memory: int = 64 * MiB, timeout: float = 60.0) -> GuestRun:
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.set_tss_addr(TSS_ADDR)
    vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
    vm.create_irqchip()
    vm.create_pit2()
    mem = GuestMemory(memory, vm)
    vcpu = None
    serial = bytearray()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        plan = load_kernel(mem, image, fmt, cmdline=cmdline, initrd=initrd, load_addr=load_addr)
        cpu_setup.write_tables(mem, paging=plan.mode == "long64")
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid(kvm.supported_cpuid())
        if plan.mode == "long64":
            cpu_setup.setup_long_mode(vcpu, rip=plan.entry, rsp=plan.stack, rsi=plan.boot_params)
        else:
            cpu_setup.setup_protected_mode(vcpu, eip=plan.entry, ebx=plan.boot_params)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        while True:
            try:
                reason, port, data = _next_exit(vcpu)
            except GuestTimeout:
                raise AssertionError(f"guest ran {timeout} s without writing port {EXIT_PORT:#x} (rip "
                                     f"{vcpu.get_regs().rip:#x}); serial so far: {bytes(serial)!r}") from None
            if reason == abi.EXIT_INTR or (reason == abi.EXIT_IO and port not in (COM1_PORT, EXIT_PORT)):
                continue
            if reason == abi.EXIT_IO and port == COM1_PORT:
                serial += data
            elif reason == abi.EXIT_IO and port == EXIT_PORT:
                return GuestRun(data[0], bytes(serial), plan, mem.e820())
            else:
                name = abi.EXIT_REASONS.get(reason, reason)
                raise AssertionError(f"guest stopped with exit {name} at rip {vcpu.get_regs().rip:#x}; serial so "
                                     f"far: {bytes(serial)!r}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if vcpu is not None:
            vcpu.close()
        mem.close()
        vm.close()
        kvm.close()


def parse_report(serial: bytes) -> dict[str, list[str]]:
    """The guests' "name=value" lines, each name with its values in order (e820_entry comes once per entry)."""
    report: dict[str, list[str]] = {}
    for line in serial.decode(errors="replace").splitlines():
        name, sep, value = line.partition("=")
        if sep:
            report.setdefault(name, []).append(value)
    return report
