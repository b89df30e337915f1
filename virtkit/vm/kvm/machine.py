"""A native-VMM machine: KVM VM, guest memory, irqchip and PIT, devices on their buses, vCPU threads, one event loop."""

from __future__ import annotations

import functools
import os
import selectors
import threading
import time
from collections.abc import Callable

from virtkit.vm.kvm import cpu_setup, layout, mptable
from virtkit.vm.kvm.bus import Bus
from virtkit.vm.kvm.cpuid import CpuidPolicy, check_applied, guest_cpuid
from virtkit.vm.kvm.devices.legacy import I8042, ExitPort, PostPort
from virtkit.vm.kvm.devices.serial import Serial
from virtkit.vm.kvm.errors import BootError, ConfigError
from virtkit.vm.kvm.kvm import Kvm, Vcpu, Vm
from virtkit.vm.kvm.memory import GuestMemory
from virtkit.vm.kvm.vcpu import Stop, VcpuThread, install_kick_handler

MAX_CPUS = 32
SERIAL_KEEP = 1 << 20  # bytes of serial output kept in memory for serial_output / wait_serial


TYPE_CHECKING = False
if TYPE_CHECKING:  # typing and pathlib stay out of virtkit-vmm's start (~5 ms); plain classes for the same reason
    from os import PathLike
    from typing import Any

    PathArg = str | PathLike[str]


class DiskConfig:
    """A virtio-blk disk: a raw file, optionally read-only."""

    __slots__ = ("path", "readonly")

    def __init__(self, path: PathArg, readonly: bool = False) -> None:
        self.path = os.fspath(path)
        self.readonly = readonly


class MachineConfig:
    """What a machine is built from; keyword arguments as in the `virtkit-vmm` flags."""

    def __init__(self, kernel: PathArg | None, kernel_format: str = "auto", load_addr: int | None = None,
                 entry: int | None = None, memory: int = 128 << 20, cpus: int = 1, cmdline: str = "",
                 initrd: PathArg | None = None, disks: list[DiskConfig] | None = None, net_tap: str | None = None,
                 net_mac: str | None = None, rng: bool = False, console: bool = False,
                 cpuid_policy: CpuidPolicy | dict[str, Any] | PathArg | None = None, dirty_log: bool = False,
                 serial_out: int | None = None, serial_in: int | None = None) -> None:
        self.kernel = os.fspath(kernel) if kernel is not None else None
        self.kernel_format = kernel_format
        self.load_addr, self.entry = load_addr, entry
        self.memory, self.cpus, self.cmdline = memory, cpus, cmdline
        self.initrd = os.fspath(initrd) if initrd is not None else None
        self.disks = list(disks or [])
        self.net_tap, self.net_mac, self.rng = net_tap, net_mac, rng
        self.console = console            # a virtio-console (hvc0) whose output joins the serial output
        self.cpuid_policy = cpuid_policy
        self.dirty_log = dirty_log
        self.serial_out = serial_out      # an fd the guest's COM1 output is written to (None: kept in memory only)
        self.serial_in = serial_in        # an fd whose bytes the guest reads from COM1

    def policy(self) -> CpuidPolicy | None:
        if self.cpuid_policy is None or isinstance(self.cpuid_policy, CpuidPolicy):
            return self.cpuid_policy
        if isinstance(self.cpuid_policy, dict):
            return CpuidPolicy.from_dict(self.cpuid_policy)
        return CpuidPolicy.from_file(os.fspath(self.cpuid_policy))

    def validate(self) -> None:
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ConfigError(f"cpus {self.cpus}: must be between 1 and {MAX_CPUS}")
        if self.kernel is not None and not os.path.isfile(self.kernel):
            raise BootError(f"kernel {self.kernel}: no such file")
        if self.initrd is not None and not os.path.isfile(self.initrd):
            raise BootError(f"initrd {self.initrd}: no such file")
        for disk in self.disks:
            if not os.path.isfile(disk.path):
                raise ConfigError(f"disk {disk.path}: no such file")


class ExitInfo:
    """How the machine ended: reason "exit-port" (status is the byte), "shutdown", "reset" or "error"."""

    __slots__ = ("reason", "status", "message")

    def __init__(self, reason: str, status: int | None, message: str = "") -> None:
        self.reason, self.status, self.message = reason, status, message

    def __repr__(self) -> str:
        return f"ExitInfo(reason={self.reason!r}, status={self.status!r}, message={self.message!r})"


class Machine:
    """Build with a MachineConfig, start(), wait(); pause/resume/snapshot while it runs; close() always."""

    def __init__(self, config: MachineConfig, *, _restoring: bool = False) -> None:
        config.validate()
        self.config = config
        self.policy = config.policy()
        self._stop: Stop | None = None
        self._stopped = threading.Event()
        self._serial_buf = bytearray()
        self._serial_cond = threading.Condition()
        self._closers: list[Callable[[], None]] = []
        self.vcpus: list[VcpuThread] = []
        self.virtio: list[Any] = []
        self._event_fds: list[tuple[int, Callable[[], None]]] = []
        self._loop_thread: threading.Thread | None = None
        self.device_lock = threading.Lock()  # held while device models run; a snapshot holds it to quiesce them
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._closers.append(self._close_wake_pipe)
        self.started_at = 0.0
        self._closed = False
        try:
            self._build(_restoring)
        except BaseException:
            self.close()
            raise

    def _close_wake_pipe(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- construction -----------------------------------------------------------------------------------------
    def _build(self, restoring: bool) -> None:
        install_kick_handler()
        self.kvm = Kvm()
        self._closers.append(self.kvm.close)
        self.vm: Vm = self.kvm.create_vm()
        self._closers.append(self.vm.close)
        # RAM slots first: registered after the irqchip, the same slot costs ~5 ms more here (measured)
        self.memory = GuestMemory(self.config.memory, self.vm, dirty_log=self.config.dirty_log)
        self._closers.append(self.memory.close)
        self.memory.add_readonly(layout.ROM_ADDR, layout.ROM_SIGNATURE + self.config.cpus.to_bytes(4, "little"))
        self.vm.set_tss_addr(layout.TSS_ADDR)
        self.vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        self.vm.set_gsi_routing(layout.gsi_routes())
        self.vm.create_pit2()
        self.io_bus, self.mmio_bus = Bus("port I/O"), Bus("MMIO")
        self._legacy_devices()
        self._virtio_devices()
        self.cmdline = self._full_cmdline()
        plan = None
        if not restoring:
            plan = self._load_kernel()
        self._create_vcpus(plan)

    def _legacy_devices(self) -> None:
        self.serial = Serial(self._serial_output, lambda level: self.vm.irq_line(layout.COM1_IRQ, int(level)))
        self.io_bus.register(layout.COM1_PORT, 8, self.serial)
        reset = Stop("reset", None, "the guest reset the machine")
        self.io_bus.register(layout.I8042_DATA, 5, I8042(lambda: self._request_stop(reset)))
        self.io_bus.register(layout.EXIT_PORT, 1, ExitPort(lambda code: self._request_stop(Stop("exit-port", code))))
        self.post_port = PostPort()
        self.io_bus.register(0x80, 1, self.post_port)
        if self.config.serial_in is not None:
            fd = self.config.serial_in
            self._event_fds.append((fd, lambda: self._serial_input(fd)))

    def _virtio_devices(self) -> None:
        if not (self.config.disks or self.config.net_tap or self.config.rng or self.config.console):
            return
        from virtkit.vm.kvm import virtio  # imported only when a machine has virtio devices

        backends: list[Any] = [virtio.BlockBackend(str(d.path), readonly=d.readonly) for d in self.config.disks]
        if self.config.net_tap:
            backends.append(virtio.NetBackend(self.config.net_tap, mac=self.config.net_mac))
        if self.config.rng:
            backends.append(virtio.RngBackend())
        if self.config.console:
            backends.append(virtio.ConsoleBackend(self._serial_output))
        for index, backend in enumerate(backends):
            base = layout.VIRTIO_MMIO_BASE + index * layout.VIRTIO_MMIO_SIZE
            gsi = layout.VIRTIO_IRQ_BASE + index
            irq_fd = self.irqfd(gsi)
            device = virtio.VirtioMmioDevice(backend, self.memory, self._raiser(irq_fd))
            self._closers.append(device.close)
            self.mmio_bus.register(base, layout.VIRTIO_MMIO_SIZE, device)
            for queue in range(device.num_queues):
                notify_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                self._closers.append(functools.partial(os.close, notify_fd))
                self.vm.ioeventfd(notify_fd, base + 0x50, 4, datamatch=queue)
                self._event_fds.append((notify_fd, self._notifier(device, queue, notify_fd)))
            self.virtio.append({"device": device, "base": base, "gsi": gsi, "irq_fd": irq_fd})

    @staticmethod
    def _raiser(fd: int) -> Callable[[], None]:
        return lambda: os.eventfd_write(fd, 1)

    @staticmethod
    def _notifier(device: Any, queue: int, fd: int) -> Callable[[], None]:
        def notify() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            device.queue_notify(queue)
        return notify

    def _full_cmdline(self) -> str:
        parts = [self.config.cmdline] if self.config.cmdline else []
        for entry in self.virtio:
            parts.append(f"virtio_mmio.device=4K@{entry['base']:#x}:{entry['gsi']}")
        return " ".join(parts)

    def _load_kernel(self) -> Any:
        from virtkit.vm.kvm.boot import load_kernel

        assert self.config.kernel is not None
        with open(self.config.kernel, "rb") as f:
            image = f.read()
        initrd = None
        if self.config.initrd:
            with open(self.config.initrd, "rb") as f:
                initrd = f.read()
        plan = load_kernel(self.memory, image, self.config.kernel_format, cmdline=self.cmdline, initrd=initrd,
                           load_addr=self.config.load_addr, entry=self.config.entry)
        cpu_setup.write_tables(self.memory, paging=plan.mode == "long64")
        mptable.write(self.memory, self.config.cpus)
        return plan

    def _create_vcpus(self, plan: Any) -> None:
        supported = self.kvm.supported_cpuid()
        for index in range(self.config.cpus):
            vcpu: Vcpu = self.vm.create_vcpu(index)
            self._closers.append(vcpu.close)
            table = guest_cpuid(supported, self.policy, cpu_index=index, cpu_count=self.config.cpus)
            vcpu.set_cpuid(table)
            if self.policy is not None and index == 0:
                check_applied(self.policy, vcpu.get_cpuid(len(table) + 8))
            if plan is not None:
                if index == 0:
                    if plan.mode == "long64":
                        cpu_setup.setup_long_mode(vcpu, rip=plan.entry, rsp=plan.stack, rsi=plan.boot_params)
                    else:
                        cpu_setup.setup_protected_mode(vcpu, eip=plan.entry, ebx=plan.boot_params)
                else:
                    cpu_setup.setup_lapic(vcpu)  # application processors wait for INIT/SIPI from the BSP
            self.vcpus.append(VcpuThread(vcpu, self.io_bus, self.mmio_bus, self._request_stop))

    # -- running ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.started_at = time.monotonic()
        self._loop_thread = threading.Thread(target=self._event_loop, name="vmm-events", daemon=True)
        self._loop_thread.start()
        for vcpu in self.vcpus:
            vcpu.start()

    def wait(self, timeout: float | None = None) -> ExitInfo | None:
        if not self._stopped.wait(timeout):
            return None
        stop = self._stop
        assert stop is not None
        return ExitInfo(stop.reason, stop.status, stop.message)

    def pause(self) -> None:
        for vcpu in self.vcpus:
            vcpu.pause()

    def resume(self) -> None:
        for vcpu in self.vcpus:
            vcpu.resume()

    def stop(self, message: str = "stopped by the host") -> None:
        self._request_stop(Stop("shutdown", None, message))

    @property
    def paused(self) -> bool:
        return bool(self.vcpus) and all(v.paused for v in self.vcpus)

    def irqfd(self, gsi: int) -> int:
        """An eventfd bound to a GSI of the in-kernel irqchip: writing it raises that interrupt (edge)."""
        fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            self.vm.irqfd(fd, gsi)
        except BaseException:
            os.close(fd)
            raise
        self._closers.append(lambda: os.close(fd))
        return fd

    def _request_stop(self, stop: Stop) -> None:
        if self._stop is None:
            self._stop = stop
        for vcpu in self.vcpus:
            vcpu.stop()
        self._stopped.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _event_sources(self) -> dict[int, Callable[[], None]]:
        """What the event loop polls now: queue notifications, serial input, and each device's own fds (a
        device drops an fd from its list at EOF, and the loop then stops polling it)."""
        sources = dict(self._event_fds)
        for entry in self.virtio:
            sources.update(entry["device"].event_sources())
        return sources

    def _event_loop(self) -> None:
        selector = selectors.DefaultSelector()
        try:
            selector.register(self._wake_r, selectors.EVENT_READ, None)
            current = self._event_sources()
            for fd, callback in current.items():
                selector.register(fd, selectors.EVENT_READ, callback)
            while not self._stopped.is_set():
                for key, _ in selector.select():
                    if key.data is None:
                        return
                    try:
                        with self.device_lock:
                            key.data()
                    except Exception as exc:  # a device failing must end the VM with the reason
                        self._request_stop(Stop("error", None, f"device event: {type(exc).__name__}: {exc}"))
                        return
                wanted = self._event_sources()
                for fd in current.keys() - wanted.keys():
                    selector.unregister(fd)
                current = {fd: cb for fd, cb in current.items() if fd in wanted}
        finally:
            selector.close()

    # -- serial -----------------------------------------------------------------------------------------------
    def _serial_output(self, data: bytes) -> None:
        if self.config.serial_out is not None:
            try:
                os.write(self.config.serial_out, data)
            except OSError:
                pass
        with self._serial_cond:
            self._serial_buf += data
            if len(self._serial_buf) > SERIAL_KEEP:
                del self._serial_buf[:len(self._serial_buf) - SERIAL_KEEP]
            self._serial_cond.notify_all()

    def _serial_input(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if data:
            self.serial.feed(data)
        else:
            self._event_fds = [(f, c) for f, c in self._event_fds if f != fd]

    @property
    def serial_output(self) -> bytes:
        with self._serial_cond:
            return bytes(self._serial_buf)

    def wait_serial(self, needle: bytes, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._serial_cond:
            while needle not in self._serial_buf:
                left = deadline - time.monotonic()
                if left <= 0 or self._stopped.is_set() and needle not in self._serial_buf:
                    return needle in self._serial_buf
                self._serial_cond.wait(min(left, 0.1))
            return True

    # -- snapshot, stats --------------------------------------------------------------------------------------
    def save_snapshot(self, directory: PathArg) -> None:
        from pathlib import Path

        from virtkit.vm.kvm.snapshot import save

        save(self, Path(directory))

    @classmethod
    def restore(cls, directory: PathArg, *, serial_out: int | None = None,
                serial_in: int | None = None) -> Machine:
        from pathlib import Path

        from virtkit.vm.kvm.snapshot import restore

        return restore(cls, Path(directory), serial_out=serial_out, serial_in=serial_in)

    def stats(self) -> dict[str, Any]:
        exits: dict[str, int] = {}
        for vcpu in self.vcpus:
            for name, count in vcpu.exits.items():
                exits[name] = exits.get(name, 0) + count
        return {
            "state": "stopped" if self._stopped.is_set() else ("paused" if self.paused else "running"),
            "uptime_s": round(time.monotonic() - self.started_at, 3) if self.started_at else 0.0,
            "exits": exits,
            "vcpus": [{"index": v.vcpu.index, "exits": dict(v.exits), "cpu_time_s": round(v.cpu_time(), 6)}
                      for v in self.vcpus],
            "serial_bytes": self.serial.bytes_out,
            "post_port_writes": self.post_port.writes,
            "devices": [{"base": hex(e["base"]), "gsi": e["gsi"], **e["device"].stats()} for e in self.virtio],
        }

    def close(self) -> None:
        """Stop the vCPUs and release everything; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self.vcpus:
            self._request_stop(Stop("shutdown", None, "closed by the host"))
            for vcpu in self.vcpus:
                vcpu.join(5)
        if self._loop_thread is not None:
            self._loop_thread.join(5)
        for closer in reversed(self._closers):
            try:
                closer()
            except OSError:
                pass
        self._closers = []
