"""virtio-console with a single port (no VIRTIO_CONSOLE_F_MULTIPORT): guest output to an fd or a callback,
host input from a readable fd."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import select
import struct
from collections.abc import Callable
from typing import Any

from virtkit.vm.kvm.errors import GuestMemoryError
from virtkit.vm.kvm.virtio import spec as S
from virtkit.vm.kvm.virtio.backend import VirtioBackend
from virtkit.vm.kvm.virtio.queue import Chain, Virtqueue, scatter

log = logging.getLogger(__name__)

RECEIVEQ, TRANSMITQ = 0, 1          # port 0's queues; more exist only with MULTIPORT
INPUT_BACKLOG = 64 * 1024           # host input held while the guest has no buffers posted; beyond it, dropped
READ_CHUNK = 4096
WRITE_CHUNK = 64 * 1024
_CONFIG = struct.Struct("<HHII")    # struct virtio_console_config: cols, rows, max_nr_ports, emerg_wr

Output = int | Callable[[bytes], None] | None


class ConsoleBackend(VirtioBackend):
    """`out`: an fd to write guest output to, or a callable given each chunk, or None to discard it.
    `in_fd`: an fd whose bytes become guest input. Both stay the caller's: close() does not close them."""

    device_id = S.VIRTIO_ID_CONSOLE
    name = "console"
    num_queues = 2

    def __init__(self, out: Output = None, in_fd: int | None = None) -> None:
        super().__init__()
        self.out = out
        self.in_fd = in_fd
        self.pending = bytearray()
        self.input_eof = False
        self.counters.update(output_bytes=0, input_bytes=0, input_dropped=0)

    def config(self) -> bytes:
        return _CONFIG.pack(0, 0, 1, 0)

    def process(self, index: int, queue: Virtqueue) -> None:
        if index == TRANSMITQ:
            while (chain := queue.pop()) is not None:
                self._output(chain)
                queue.push(chain.head, 0)
        elif index == RECEIVEQ:
            self._deliver()

    def _output(self, chain: Chain) -> None:
        self.counters["requests"] += 1
        if chain.error or chain.writable:
            self.counters["errors"] += 1
            return
        for gpa, n in chain.readable:
            for offset in range(0, n, WRITE_CHUNK):
                self._emit(self.memory.read(gpa + offset, min(WRITE_CHUNK, n - offset)))

    def _emit(self, data: bytes) -> None:
        self.counters["output_bytes"] += len(data)
        self.counters["bytes"] += len(data)
        if self.out is None:
            return
        try:
            if isinstance(self.out, int):
                view = memoryview(data)
                while view:
                    view = view[os.write(self.out, view):]
            else:
                self.out(data)
        except Exception as exc:    # a closed pipe or a failing sink loses output, never the device
            self.counters["errors"] += 1
            log.debug("virtio-console: output lost: %r", exc)

    def event_sources(self) -> list[tuple[int, Callable[[], None]]]:
        return [] if self.in_fd is None or self.input_eof else [(self.in_fd, self._on_input)]

    def _on_input(self) -> None:
        assert self.in_fd is not None
        poller = select.poll()      # a blocking fd must not stall the event loop on a spurious wakeup
        poller.register(self.in_fd, select.POLLIN)
        if not poller.poll(0):
            return
        try:
            data = os.read(self.in_fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.counters["errors"] += 1
            log.debug("virtio-console: input failed: %r", exc)
            return
        if not data:
            self.input_eof = True
            return
        room = INPUT_BACKLOG - len(self.pending)
        self.pending += data[:room]
        self.counters["input_dropped"] += max(0, len(data) - room)
        self._deliver()

    def _deliver(self) -> None:
        queue = self.ctx.queue(RECEIVEQ) if self.ctx is not None else None
        while queue is not None and self.pending and (chain := queue.pop()) is not None:
            if chain.error or chain.readable:
                self.counters["errors"] += 1
                queue.push(chain.head, 0)
                continue
            try:
                written = scatter(self.memory, chain.writable, 0, bytes(self.pending[:chain.writable_len]))
            except GuestMemoryError:
                self.counters["errors"] += 1
                written = 0
            del self.pending[:written]
            self.counters["input_bytes"] += written
            self.counters["bytes"] += written
            queue.push(chain.head, written)

    def save(self) -> dict[str, Any]:
        return {**super().save(), "pending": base64.b64encode(bytes(self.pending)).decode()}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        try:
            self.pending = bytearray(base64.b64decode(state.get("pending", ""), validate=True)[:INPUT_BACKLOG])
        except (binascii.Error, TypeError, ValueError):
            self.pending = bytearray()
