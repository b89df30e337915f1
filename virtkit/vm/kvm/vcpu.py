"""A vCPU's thread: the run loop that enters the guest and dispatches every exit, with counters, pause and stop."""

from __future__ import annotations

import collections
import ctypes as C
import signal
import threading
import time
from collections.abc import Callable

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.bus import Bus
from virtkit.vm.kvm.errors import VmmError
from virtkit.vm.kvm.kvm import Vcpu

KICK_SIGNAL = signal.SIGUSR1  # interrupts KVM_RUN in a vCPU thread (immediate_exit covers the race)
_SIZES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class Stop:
    """Why the guest stopped: the exit port's byte, a shutdown/reset, or an error."""

    __slots__ = ("reason", "status", "message")

    def __init__(self, reason: str, status: int | None = None, message: str = "") -> None:
        self.reason = reason      # "exit-port" | "shutdown" | "reset" | "triple-fault" | "error"
        self.status = status
        self.message = message


def _name_thread(name: str) -> None:
    """The kernel's name of this thread (/proc/PID/task/TID/comm), so vCPU threads can be found and pinned."""
    try:
        libc = C.CDLL(None, use_errno=True)
        libc.prctl(15, C.c_char_p(name.encode()[:15]), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def install_kick_handler() -> None:
    """A no-op handler for the kick signal (its default would end the process); needs the main thread."""
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, None):
        signal.signal(KICK_SIGNAL, lambda _signum, _frame: None)


class VcpuThread:
    """Runs one vCPU until the machine stops; pause() parks it outside KVM_RUN so its state can be read."""

    def __init__(self, vcpu: Vcpu, io_bus: Bus, mmio_bus: Bus, on_stop: Callable[[Stop], None]) -> None:
        self.vcpu = vcpu
        self.io_bus = io_bus
        self.mmio_bus = mmio_bus
        self._on_stop = on_stop
        self.exits: collections.Counter[str] = collections.Counter()
        self.io_ports: collections.Counter[int] = collections.Counter()
        self._cond = threading.Condition()
        self._pause_requested = False
        self._paused = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._native_id: int | None = None
        self._clock_id: int | None = None
        self.cpu_time_final = 0.0

    # -- control (any thread) -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=f"vcpu{self.vcpu.index}", daemon=True)
        self._thread.start()

    def _kick(self) -> None:
        self.vcpu.run_struct.immediate_exit = 1
        ident = self._thread.ident if self._thread else None
        if ident is not None and self._thread is not None and self._thread.is_alive():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def pause(self, timeout: float = 5.0) -> None:
        with self._cond:
            if self._paused or self._stopping:
                return
            self._pause_requested = True
            self._kick()
            deadline = time.monotonic() + timeout
            while not self._paused and not self._stopping:
                if not self._cond.wait(0.05):
                    if time.monotonic() > deadline:
                        raise VmmError(f"vCPU {self.vcpu.index} did not pause within {timeout} s")
                    self._kick()

    def resume(self, timeout: float = 5.0) -> None:
        """Let the vCPU run again; returns once it has left its parking place (so state reads 'running')."""
        with self._cond:
            self._pause_requested = False
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self._paused or self._stopping, timeout)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._pause_requested = False
            self._cond.notify_all()
        self._kick()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def paused(self) -> bool:
        return self._paused

    def cpu_time(self) -> float:
        """Seconds of host CPU this vCPU's thread has used (in and out of the guest)."""
        if self._clock_id is None:
            return self.cpu_time_final
        try:
            return time.clock_gettime(self._clock_id)
        except OSError:
            return self.cpu_time_final

    # -- the loop (its own thread) --------------------------------------------------------------------------
    def _loop(self) -> None:
        self._clock_id = time.pthread_getcpuclockid(threading.get_ident())
        _name_thread(f"vcpu{self.vcpu.index}")
        run = self.vcpu.run_struct
        try:
            while True:
                if self._pause_requested or self._stopping:
                    if not self._park():
                        return
                self.vcpu.run()
                reason = run.exit_reason
                if reason == abi.EXIT_IO:
                    self.exits["IO"] += 1
                    self._io(run)
                elif reason == abi.EXIT_MMIO:
                    self.exits["MMIO"] += 1
                    self._mmio(run)
                elif reason == abi.EXIT_INTR:
                    self.exits["INTR"] += 1
                    run.immediate_exit = 0
                else:
                    name = abi.EXIT_REASONS.get(reason, f"UNKNOWN_{reason}")
                    self.exits[name] += 1
                    stop = self._other(reason, run)
                    if stop is not None:
                        self._on_stop(stop)
                        return
        except VmmError as exc:
            self._on_stop(Stop("error", None, f"vCPU {self.vcpu.index}: {exc}"))
        except Exception as exc:  # a device model bug must end the VM with a message, not hang it
            self._on_stop(Stop("error", None, f"vCPU {self.vcpu.index}: {type(exc).__name__}: {exc}"))
        finally:
            self.cpu_time_final = self.cpu_time()
            self._clock_id = None

    def _park(self) -> bool:
        """Wait while paused; False when the machine is stopping."""
        with self._cond:
            if self._stopping:
                return False
            self._paused = True
            self._cond.notify_all()
            while self._pause_requested and not self._stopping:
                self._cond.wait()
            self._paused = False
            self._cond.notify_all()
            self.vcpu.run_struct.immediate_exit = 0
            return not self._stopping

    def _io(self, run: abi.Run) -> None:
        io = run.exit.io
        port, size, count = io.port, io.size, io.count
        self.io_ports[port] += 1
        page = self.vcpu.run_page
        offset = io.data_offset
        if io.direction == abi.EXIT_IO_OUT:
            for i in range(count):
                start = offset + i * size
                self.io_bus.write(port, size, int.from_bytes(page[start:start + size], "little"))
        else:
            for i in range(count):
                start = offset + i * size
                page[start:start + size] = self.io_bus.read(port, size).to_bytes(size, "little")

    def _mmio(self, run: abi.Run) -> None:
        mmio = run.exit.mmio
        length = mmio.len
        if length not in _SIZES:
            raise VmmError(f"MMIO access of {length} bytes at {mmio.phys_addr:#x}")
        if mmio.is_write:
            value = int.from_bytes(bytes(mmio.data)[:length], "little")
            self.mmio_bus.write(mmio.phys_addr, length, value)
        else:
            value = self.mmio_bus.read(mmio.phys_addr, length)
            C.memmove(C.addressof(mmio.data), value.to_bytes(length, "little"), length)

    def _other(self, reason: int, run: abi.Run) -> Stop | None:
        if reason == abi.EXIT_HLT:
            return None  # the in-kernel LAPIC parks HLT itself; an exit here is re-entered
        if reason == abi.EXIT_SHUTDOWN:
            return Stop("triple-fault", None, "the guest triple-faulted (KVM shutdown exit)")
        if reason == abi.EXIT_SYSTEM_EVENT:
            kind = run.exit.system_event.type
            if kind == abi.SYSTEM_EVENT_RESET:
                return Stop("reset", None, "the guest asked for a reset")
            if kind == abi.SYSTEM_EVENT_CRASH:
                return Stop("error", None, "the guest crashed (system event)")
            return Stop("shutdown", None, "the guest powered off")
        if reason == abi.EXIT_INTERNAL_ERROR:
            internal = run.exit.internal
            data = " ".join(f"{internal.data[i]:#x}" for i in range(min(internal.ndata, 16)))
            return Stop("error", None, f"KVM internal error, suberror {internal.suberror} {data}".rstrip())
        if reason == abi.EXIT_FAIL_ENTRY:
            fail = run.exit.fail_entry
            return Stop("error", None, f"VM entry failed, hardware reason {fail.hardware_entry_failure_reason:#x}")
        name = abi.EXIT_REASONS.get(reason, str(reason))
        return Stop("error", None, f"unhandled exit {name} at rip {self.vcpu.get_regs().rip:#x}")
