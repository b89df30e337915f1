"""The virtio-mmio transport (version 2): the register file of one device window, its queues and interrupts.

One `VirtioMmioDevice` answers one 0x1000 window on the VMM's MMIO bus: registers below 0x100, the backend's
configuration space from 0x100. Register accesses arrive on vCPU threads, queue notifications and fd events on the
VMM's event-loop thread; one re-entrant lock per device serialises them (re-entrant because a backend working
under it may report a config change). Whatever the guest writes, nothing but a log line leaves these methods:
a bad request fails alone, a broken ring sets DEVICE_NEEDS_RESET until the driver resets the device.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

from virtkit.vm.kvm.errors import DeviceError, GuestMemoryError
from virtkit.vm.kvm.memory import GuestMemory
from virtkit.vm.kvm.virtio import spec as S
from virtkit.vm.kvm.virtio.backend import VirtioBackend
from virtkit.vm.kvm.virtio.queue import QueueBroken, Virtqueue

log = logging.getLogger(__name__)

_MASK32 = 0xFFFFFFFF
_TRANSPORT_FEATURES = (1 << S.VIRTIO_F_VERSION_1) | (1 << S.VIRTIO_RING_F_INDIRECT_DESC)
_QUEUE_ADDRESS = {S.VIRTIO_MMIO_QUEUE_DESC_LOW: ("desc", 0), S.VIRTIO_MMIO_QUEUE_DESC_HIGH: ("desc", 32),
                  S.VIRTIO_MMIO_QUEUE_AVAIL_LOW: ("avail", 0), S.VIRTIO_MMIO_QUEUE_AVAIL_HIGH: ("avail", 32),
                  S.VIRTIO_MMIO_QUEUE_USED_LOW: ("used", 0), S.VIRTIO_MMIO_QUEUE_USED_HIGH: ("used", 32)}
SNAPSHOT_VERSION = 1


class VirtioMmioDevice:
    """A virtio device behind the MMIO transport; implements the VMM's BusDevice protocol."""

    def __init__(self, backend: VirtioBackend, memory: GuestMemory, interrupt: Callable[[], None]) -> None:
        self.backend = backend
        self.memory = memory
        self._interrupt = interrupt
        self._lock = threading.RLock()
        self.queues = [Virtqueue(memory, i, backend.queue_size) for i in range(backend.num_queues)]
        self.device_features = backend.features | _TRANSPORT_FEATURES
        self.config_generation = 0
        self.counters = {"notifications": 0, "interrupts": 0, "resets": 0, "broken": 0}
        self._reset_registers()
        backend.attach(self)

    def _reset_registers(self) -> None:
        self.status = 0
        self.device_features_sel = 0
        self.driver_features_sel = 0
        self._driver_features = 0
        self.queue_sel = 0
        self.interrupt_status = 0
        self.broken_reason: str | None = None
        for q in self.queues:
            q.reset()

    # -- DeviceContext, for the backend ---------------------------------------------------------------------
    @property
    def num_queues(self) -> int:
        return len(self.queues)

    @property
    def driver_features(self) -> int:
        return self._driver_features

    def _live(self) -> bool:
        need = S.VIRTIO_CONFIG_S_DRIVER_OK | S.VIRTIO_CONFIG_S_FEATURES_OK
        return (self.status & need == need and self.broken_reason is None
                and not self.status & S.VIRTIO_CONFIG_S_FAILED)

    def queue(self, index: int) -> Virtqueue | None:
        if not self._live() or not 0 <= index < len(self.queues) or not self.queues[index].ready:
            return None
        return self.queues[index]

    def config_changed(self) -> None:
        with self._lock:
            self.config_generation = (self.config_generation + 1) & _MASK32
            self._raise(S.VIRTIO_MMIO_INT_CONFIG)

    # -- BusDevice ------------------------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        with self._lock:
            try:
                return self._read(offset, size)
            except Exception:   # a bug here must not take the vCPU thread down; the guest reads zero
                log.exception("virtio-%s: register read at %#x failed", self.backend.name, offset)
                return 0

    def write(self, offset: int, size: int, value: int) -> None:
        with self._lock:
            try:
                self._write(offset, size, value & ((1 << (8 * size)) - 1))
            except Exception as exc:    # the guest cannot be allowed to raise into the VMM through a register
                log.exception("virtio-%s: register write at %#x failed", self.backend.name, offset)
                self._mark_broken(f"internal error on register write at {offset:#x}: {exc!r}")

    def _read(self, offset: int, size: int) -> int:
        if offset >= S.VIRTIO_MMIO_CONFIG:
            config = self.backend.config()
            start = offset - S.VIRTIO_MMIO_CONFIG
            if size not in (1, 2, 4, 8) or start + size > len(config):
                return 0
            return int.from_bytes(config[start:start + size], "little")
        if size != 4 or offset % 4:     # the spec allows only aligned 32-bit register accesses
            return 0
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        if offset in _QUEUE_ADDRESS:
            name, shift = _QUEUE_ADDRESS[offset]
            return (getattr(q, name) >> shift) & _MASK32 if q is not None else 0
        values: dict[int, Callable[[], int]] = {
            S.VIRTIO_MMIO_MAGIC_VALUE: lambda: S.VIRTIO_MMIO_MAGIC,
            S.VIRTIO_MMIO_VERSION: lambda: 2,
            S.VIRTIO_MMIO_DEVICE_ID: lambda: self.backend.device_id,
            S.VIRTIO_MMIO_VENDOR_ID: lambda: S.VIRTKIT_VENDOR_ID,
            S.VIRTIO_MMIO_DEVICE_FEATURES: lambda: ((self.device_features >> (32 * self.device_features_sel)) & _MASK32
                                                    if self.device_features_sel < 2 else 0),
            S.VIRTIO_MMIO_QUEUE_NUM_MAX: lambda: q.max_size if q is not None else 0,
            S.VIRTIO_MMIO_QUEUE_NUM: lambda: q.size if q is not None else 0,
            S.VIRTIO_MMIO_QUEUE_READY: lambda: int(q.ready) if q is not None else 0,
            S.VIRTIO_MMIO_INTERRUPT_STATUS: lambda: self.interrupt_status,
            S.VIRTIO_MMIO_STATUS: lambda: self.status,
            S.VIRTIO_MMIO_CONFIG_GENERATION: lambda: self.config_generation,
        }
        get = values.get(offset)
        return get() if get is not None else 0

    def _write(self, offset: int, size: int, value: int) -> None:
        if offset >= S.VIRTIO_MMIO_CONFIG:
            start = offset - S.VIRTIO_MMIO_CONFIG
            if size in (1, 2, 4, 8) and offset + size <= S.VIRTIO_MMIO_WINDOW:
                self.backend.write_config(start, value.to_bytes(size, "little"))
            return
        if size != 4 or offset % 4:
            return
        q = self.queues[self.queue_sel] if self.queue_sel < len(self.queues) else None
        if offset == S.VIRTIO_MMIO_DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == S.VIRTIO_MMIO_DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == S.VIRTIO_MMIO_DRIVER_FEATURES:
            # features are fixed once FEATURES_OK is set; words past the second do not exist
            if not self.status & S.VIRTIO_CONFIG_S_FEATURES_OK and self.driver_features_sel < 2:
                shift = 32 * self.driver_features_sel
                self._driver_features = (self._driver_features & ~(_MASK32 << shift)) | (value << shift)
        elif offset == S.VIRTIO_MMIO_QUEUE_SEL:
            self.queue_sel = value
        elif offset == S.VIRTIO_MMIO_QUEUE_NUM:
            if q is not None and not q.ready:
                q.size = value
        elif offset in _QUEUE_ADDRESS:
            if q is not None and not q.ready:
                name, shift = _QUEUE_ADDRESS[offset]
                setattr(q, name, (getattr(q, name) & ~(_MASK32 << shift)) | (value << shift))
        elif offset == S.VIRTIO_MMIO_QUEUE_READY:
            if q is not None:
                self._set_queue_ready(q, bool(value & 1))
        elif offset == S.VIRTIO_MMIO_QUEUE_NOTIFY:
            self.queue_notify(value & 0xFFFF)    # no VIRTIO_F_NOTIFICATION_DATA: the value is the queue index
        elif offset == S.VIRTIO_MMIO_INTERRUPT_ACK:
            self.interrupt_status &= ~value
        elif offset == S.VIRTIO_MMIO_STATUS:
            self._set_status(value & 0xFF)

    def _set_queue_ready(self, q: Virtqueue, ready: bool) -> None:
        if not ready:
            q.ready = False
        elif not q.ready:
            try:
                q.activate()
            except QueueBroken as exc:
                self._mark_broken(str(exc))

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.reset()
            return
        if value & S.VIRTIO_CONFIG_S_FEATURES_OK and not self.status & S.VIRTIO_CONFIG_S_FEATURES_OK:
            unknown = self._driver_features & ~self.device_features
            if unknown or not self._driver_features & (1 << S.VIRTIO_F_VERSION_1):
                # refusing is done by leaving FEATURES_OK clear: the driver reads it back and gives up
                log.info("virtio-%s: refused driver features %#x", self.backend.name, self._driver_features)
                value &= ~S.VIRTIO_CONFIG_S_FEATURES_OK
            else:
                indirect = bool(self._driver_features & (1 << S.VIRTIO_RING_F_INDIRECT_DESC))
                for q in self.queues:
                    q.indirect = indirect
        started = value & S.VIRTIO_CONFIG_S_DRIVER_OK and not self.status & S.VIRTIO_CONFIG_S_DRIVER_OK
        self.status = value | (self.status & S.VIRTIO_CONFIG_S_NEEDS_RESET)
        if started:
            # buffers the driver made available (and notified) before DRIVER_OK were not consumed then
            for q in self.queues:
                if self.queue(q.index) is not None:
                    self._run(functools.partial(self.backend.process, q.index, q))

    def reset(self) -> None:
        """Device reset (the driver wrote 0 to Status): registers, queues and backend session state."""
        with self._lock:
            self._reset_registers()
            self.counters["resets"] += 1
            try:
                self.backend.reset()
            except Exception:
                log.exception("virtio-%s: backend reset failed", self.backend.name)

    # -- queues and interrupts ------------------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        """The driver notified queue `index` (an ioeventfd or a QueueNotify write): process it."""
        with self._lock:
            self.counters["notifications"] += 1
            q = self.queue(index)
            if q is not None:
                self._run(functools.partial(self.backend.process, index, q))

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except (QueueBroken, GuestMemoryError) as exc:
            self._signal_used()
            self._mark_broken(str(exc))
            return
        except Exception as exc:    # a backend bug must not escape into the VMM's event loop
            log.exception("virtio-%s: processing failed", self.backend.name)
            self._signal_used()
            self._mark_broken(f"internal error: {exc!r}")
            return
        self._signal_used()

    def _signal_used(self) -> None:
        wanted = False
        for q in self.queues:
            if q.pending_signal:
                q.pending_signal = False
                try:
                    wanted = q.interrupt_wanted() or wanted
                except QueueBroken:
                    wanted = True
        if wanted:
            self._raise(S.VIRTIO_MMIO_INT_VRING)

    def _raise(self, bit: int) -> None:
        self.interrupt_status |= bit
        self.counters["interrupts"] += 1
        try:
            self._interrupt()
        except OSError:     # the VMM is tearing down its irqfd; nothing is left to tell
            log.warning("virtio-%s: interrupt could not be raised", self.backend.name)

    def _mark_broken(self, reason: str) -> None:
        if self.broken_reason is not None:
            return
        log.warning("virtio-%s: device needs reset: %s", self.backend.name, reason)
        self.broken_reason = reason
        self.counters["broken"] += 1
        self.status |= S.VIRTIO_CONFIG_S_NEEDS_RESET
        self._raise(S.VIRTIO_MMIO_INT_CONFIG)

    def event_sources(self) -> list[tuple[int, Callable[[], None]]]:
        """Host fds for the VMM's event loop to poll for readability, with the callback for each."""
        return [(fd, functools.partial(self._on_event, callback)) for fd, callback in self.backend.event_sources()]

    def _on_event(self, callback: Callable[[], None]) -> None:
        with self._lock:
            self._run(callback)

    # -- snapshot, stats, teardown --------------------------------------------------------------------------
    def save(self) -> dict[str, Any]:
        with self._lock:
            return {"version": SNAPSHOT_VERSION, "device_id": self.backend.device_id, "status": self.status,
                    "device_features_sel": self.device_features_sel, "driver_features": self._driver_features,
                    "driver_features_sel": self.driver_features_sel, "queue_sel": self.queue_sel,
                    "interrupt_status": self.interrupt_status, "config_generation": self.config_generation,
                    "broken_reason": self.broken_reason, "counters": dict(self.counters),
                    "queues": [q.save() for q in self.queues], "backend": self.backend.save()}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from `save()` output (guest memory restored by the VMM); DeviceError if it does not fit."""
        with self._lock:
            try:
                if state["version"] != SNAPSHOT_VERSION or state["device_id"] != self.backend.device_id:
                    raise DeviceError(f"virtio-{self.backend.name}: snapshot is of version {state['version']}, "
                                      f"device {state['device_id']}")
                queues = state["queues"]
                if len(queues) != len(self.queues):
                    raise DeviceError(f"virtio-{self.backend.name}: snapshot has {len(queues)} queues, "
                                      f"device {len(self.queues)}")
                fields = ("status", "device_features_sel", "driver_features", "driver_features_sel", "queue_sel",
                          "interrupt_status", "config_generation")
                values = {name: int(state[name]) for name in fields}
                broken = state["broken_reason"]
                backend_state = dict(state["backend"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DeviceError(f"virtio-{self.backend.name}: snapshot state is malformed: {exc!r}") from exc
            self._reset_registers()
            self.status, self._driver_features = values["status"], values["driver_features"]
            self.device_features_sel, self.driver_features_sel = values["device_features_sel"], \
                values["driver_features_sel"]
            self.queue_sel, self.interrupt_status = values["queue_sel"], values["interrupt_status"]
            self.config_generation = values["config_generation"]
            self.broken_reason = None if broken is None else str(broken)
            for key, value in dict(state.get("counters", {})).items():
                if key in self.counters and isinstance(value, int):
                    self.counters[key] = value
            indirect = bool(self._driver_features & (1 << S.VIRTIO_RING_F_INDIRECT_DESC))
            for q, q_state in zip(self.queues, queues, strict=True):
                q.restore(q_state)
                q.indirect = indirect
            self.backend.restore(backend_state)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"device": self.backend.name, "device_id": self.backend.device_id, "status": self.status,
                    "broken_reason": self.broken_reason, **self.counters, **self.backend.stats()}

    def close(self) -> None:
        with self._lock:
            self.backend.close()
