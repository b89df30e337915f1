"""An instance's output as users see it: (stream, bytes) records out of a driver's log, and the last N lines of them.

A driver whose log keeps stdout and stderr apart (containers) has `log_decoder(instance)`; one with a single
stream (a VM's serial console) may have `output_filter(instance)` (what to hide of it), and all of it is stdout.
Either way a decoder has feed(bytes) -> [(stream, bytes)] and flush() -> [(stream, bytes)].
"""

from __future__ import annotations

from collections import deque
from typing import Any

STDOUT = 1
STDERR = 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}


class SingleStreamDecoder:
    """A log that is one stream: everything is stdout, through the driver's filter (feed/flush) if it has one."""

    def __init__(self, output_filter: Any = None) -> None:
        self.filter = output_filter

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        shown = self.filter.feed(data) if self.filter else data
        return [(STDOUT, shown)] if shown else []

    def flush(self) -> list[tuple[int, bytes]]:
        rest = self.filter.flush() if self.filter else b""
        return [(STDOUT, rest)] if rest else []


class LineTail:
    """Keeps the last `n` lines of records fed to it (a line without its newline yet counts as one, last)."""

    def __init__(self, n: int) -> None:
        self.n = max(0, n)
        self.lines: deque[tuple[int, bytes]] = deque(maxlen=self.n)
        self.pending: dict[int, bytes] = {}     # per stream: the start of a line whose end has not come

    def add(self, records: list[tuple[int, bytes]]) -> None:
        for stream, data in records:
            parts = (self.pending.pop(stream, b"") + data).split(b"\n")
            last = parts.pop()
            for line in parts:
                self.lines.append((stream, line + b"\n"))
            if last:
                self.pending[stream] = last

    def result(self) -> list[tuple[int, bytes]]:
        if self.n == 0:
            return []
        kept = (list(self.lines) + list(self.pending.items()))[-self.n:]
        out: list[tuple[int, bytes]] = []
        for stream, data in kept:
            if out and out[-1][0] == stream:
                out[-1] = (stream, out[-1][1] + data)
            else:
                out.append((stream, data))
        return out
