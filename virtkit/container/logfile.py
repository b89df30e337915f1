"""The container log file: what a container writes on stdout and stderr, apart and in order, in CRI's format.

One record per line, as the kubelet, CRI-O/conmon and containerd write container logs (`crictl logs` reads them):

    2024-05-01T12:00:00.123456789Z stdout F hello
    2024-05-01T12:00:00.200000000Z stderr P no newline ye
    2024-05-01T12:00:00.300000000Z stderr F t

`F` marks content that ended a line (the newline itself is not stored), `P` a piece without one: a partial line
that was read before its end came. A stream's bytes are its records' contents joined, with a newline after each
`F`. The supervisor writes records as it reads the container's pipes (`encode`); virtkitd reads them back
(`LogDecoder`). A line that is not a record (e.g. a log written raw by an older supervisor) reads as stdout.
"""

from __future__ import annotations

import time

from virtkit.core.logs import STDERR, STDOUT

STREAMS = {STDOUT: b"stdout", STDERR: b"stderr"}
_BY_NAME = {v: k for k, v in STREAMS.items()}


def timestamp(now_ns: int | None = None) -> bytes:
    """RFC 3339 in UTC with nanoseconds, as CRI's RFC3339Nano (fixed width: records sort as text)."""
    ns = time.time_ns() if now_ns is None else now_ns
    secs, frac = divmod(ns, 1_000_000_000)
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z").encode()


def encode(stream: int, data: bytes, now_ns: int | None = None) -> bytes:
    """The records for `data`, one read from `stream`; a trailing piece without newline becomes a P record."""
    head = timestamp(now_ns) + b" " + STREAMS[stream]
    lines = data.split(b"\n")
    last = lines.pop()
    out = [head + b" F " + line + b"\n" for line in lines]
    if last:
        out.append(head + b" P " + last + b"\n")
    return b"".join(out)


def parse(record: bytes) -> tuple[int, bytes, bool]:
    """(stream, content, ends a line) of one record without its newline; a non-record line is a stdout line."""
    parts = record.split(b" ", 3)
    if len(parts) >= 3 and parts[1] in _BY_NAME and parts[2] in (b"F", b"P"):
        return _BY_NAME[parts[1]], parts[3] if len(parts) == 4 else b"", parts[2] == b"F"
    return STDOUT, record, True


class LogDecoder:
    """Bytes of the log file in (any chunking), (stream, bytes) out, consecutive pieces of a stream joined."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return _joined(lines)

    def flush(self) -> list[tuple[int, bytes]]:
        """At the end of what will be read: a record cut short (being written right now) counts as it is."""
        rest, self._partial = self._partial, b""
        return _joined([rest]) if rest else []


def _joined(records: list[bytes]) -> list[tuple[int, bytes]]:
    runs: list[tuple[int, list[bytes]]] = []
    for record in records:
        stream, content, full = parse(record)
        if full:
            content += b"\n"
        if not content:
            continue
        if runs and runs[-1][0] == stream:
            runs[-1][1].append(content)
        else:
            runs.append((stream, [content]))
    return [(stream, b"".join(pieces)) for stream, pieces in runs]
