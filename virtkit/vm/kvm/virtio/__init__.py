"""Virtio 1.x devices of the native VMM: the virtio-mmio transport, split virtqueues, and the device backends.

Pure-Python models; every guest-physical access goes through GuestMemory, which bounds-checks it.

Use (the VMM):

    device = VirtioMmioDevice(BlockBackend("/path/disk.raw", readonly=False), memory, raise_irq)
    mmio_bus.register(VIRTIO_MMIO_BASE + i * VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SIZE, device)
    # ioeventfd at base + 0x50 with datamatch=q  ->  device.queue_notify(q)   for q in range(device.num_queues)
    # for fd, callback in device.event_sources(): poll fd for readability, call callback()
    state = device.save(); ...; device.restore(state)      # JSON-serialisable; guest memory saved apart
    device.stats(); device.close()

`VirtioMmioDevice(backend, memory, interrupt)`: `interrupt()` is called after InterruptStatus got bit 0 (used
buffers) or bit 1 (configuration change, also how a device that needs a reset says so).

Backends (device_id, device feature bits and config space each; VIRTIO_F_VERSION_1 and
VIRTIO_RING_F_INDIRECT_DESC are added by the transport):

- `BlockBackend(path, readonly=False, *, serial=None)`: virtio-blk on a raw image or block device; IN, OUT,
  FLUSH, GET_ID; VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO when read-only.
- `NetBackend(tap, mac=None)`: virtio-net on a TAP, `tap` an interface name or an open TAP fd (duplicated);
  `mac` 'aa:bb:..' or 6 bytes, random if None; VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS (link always up).
- `RngBackend()`: virtio-rng from the host CSPRNG.
- `ConsoleBackend(out=None, in_fd=None)`: virtio-console, one port; `out` an fd or a callable taking bytes;
  `in_fd` polled for input. The caller keeps ownership of both fds.
"""

from __future__ import annotations

from virtkit.vm.kvm.virtio.backend import DeviceContext, VirtioBackend
from virtkit.vm.kvm.virtio.blk import BlockBackend
from virtkit.vm.kvm.virtio.console import ConsoleBackend
from virtkit.vm.kvm.virtio.mmio import VirtioMmioDevice
from virtkit.vm.kvm.virtio.net import NetBackend
from virtkit.vm.kvm.virtio.queue import Chain, QueueBroken, Virtqueue
from virtkit.vm.kvm.virtio.rng import RngBackend

__all__ = ["BlockBackend", "Chain", "ConsoleBackend", "DeviceContext", "NetBackend", "QueueBroken", "RngBackend",
           "VirtioBackend", "VirtioMmioDevice", "Virtqueue"]
