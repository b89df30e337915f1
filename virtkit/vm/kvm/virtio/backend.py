"""The contract between the virtio-mmio transport and a device backend (blk, net, rng, console).

The transport owns registers, feature negotiation, queues, interrupts and locking; a backend owns what the
device does with a chain. The transport calls a backend only under its device lock, and turns any exception a
backend lets out into "device needs reset" rather than let it reach the VMM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from virtkit.vm.kvm.memory import GuestMemory
from virtkit.vm.kvm.virtio.queue import Virtqueue

DEFAULT_QUEUE_SIZE = 256


class DeviceContext(Protocol):
    """What the transport lends a backend: guest memory, the live queues, negotiated features."""

    memory: GuestMemory

    def queue(self, index: int) -> Virtqueue | None:
        """The queue if the driver set the device up (DRIVER_OK, queue ready, not broken), else None."""
        ...

    @property
    def driver_features(self) -> int: ...

    def config_changed(self) -> None:
        """Bump ConfigGeneration and raise a configuration-change interrupt."""
        ...


class VirtioBackend:
    """Base of the device backends: identity, feature bits, config space, queue processing, host fds."""

    device_id = 0
    name = "virtio"
    num_queues = 1
    queue_size = DEFAULT_QUEUE_SIZE

    def __init__(self) -> None:
        self.features = 0                 # device-type feature bits; the transport adds VERSION_1 and INDIRECT_DESC
        self.ctx: DeviceContext | None = None
        self.counters: dict[str, int] = {"requests": 0, "bytes": 0, "errors": 0}

    def attach(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    @property
    def memory(self) -> GuestMemory:
        if self.ctx is None:
            raise RuntimeError(f"{self.name}: backend used before it was attached to a transport")
        return self.ctx.memory

    def config(self) -> bytes:
        """The device-specific configuration space, as the driver reads it at 0x100."""
        return b""

    def write_config(self, offset: int, data: bytes) -> None:
        """A driver write to config space; the devices here have no writable config fields, so it is dropped."""

    def process(self, index: int, queue: Virtqueue) -> None:
        """Consume what the driver made available on queue `index` (it notified it)."""
        raise NotImplementedError

    def event_sources(self) -> list[tuple[int, Callable[[], None]]]:
        """Host fds to poll for readability, each with what to do when readable (called under the device lock)."""
        return []

    def reset(self) -> None:
        """The driver reset the device (Status 0): drop per-session state, keep the host resources."""

    def save(self) -> dict[str, Any]:
        return {"counters": dict(self.counters)}

    def restore(self, state: dict[str, Any]) -> None:
        counters = state.get("counters", {})
        if isinstance(counters, dict):
            for key, value in counters.items():
                if isinstance(value, int):
                    self.counters[str(key)] = value

    def stats(self) -> dict[str, Any]:
        return dict(self.counters)

    def close(self) -> None:
        """Release host fds the backend owns."""
