"""virtio-rng (entropy device): fills the driver's buffers from the host kernel's CSPRNG."""

from __future__ import annotations

import os

from virtkit.vm.kvm.errors import GuestMemoryError
from virtkit.vm.kvm.virtio import spec as S
from virtkit.vm.kvm.virtio.backend import VirtioBackend
from virtkit.vm.kvm.virtio.queue import Chain, Virtqueue, scatter

MAX_FILL = 64 * 1024        # bytes per request: the guest sizes its buffer, not our allocation


class RngBackend(VirtioBackend):
    """One request queue; each chain's device-writable part gets up to MAX_FILL random bytes."""

    device_id = S.VIRTIO_ID_RNG
    name = "rng"
    num_queues = 1

    def process(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            queue.push(chain.head, self._fill(chain))

    def _fill(self, chain: Chain) -> int:
        self.counters["requests"] += 1
        if chain.error or chain.readable:   # an entropy request is device-writable only
            self.counters["errors"] += 1
            return 0
        try:
            written = scatter(self.memory, chain.writable, 0, os.urandom(min(chain.writable_len, MAX_FILL)))
        except GuestMemoryError:
            self.counters["errors"] += 1
            return 0
        self.counters["bytes"] += written
        return written
