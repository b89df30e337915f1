"""HTTP/1.1 over the daemon's unix socket, written for start-up speed.

Why not httpx (or http.client, or h11): on the CLI's hot path their imports alone cost ~150 ms (httpx), ~20 ms
(http.client, through the email package) and ~20 ms (h11) here, where `virtkit run` has a latency goal of a few
tens of milliseconds. virtkitd is the only peer, so the subset is small: one request per connection
(`Connection: close`), JSON bodies with Content-Length, responses with Content-Length or chunked encoding.
"""

from __future__ import annotations

import _socket  # the C module: socket.py imports selectors and builds enums, ~2 ms of every command
import json
from collections.abc import Callable, Iterator

from virtkit.core.errors import DaemonUnavailable, VirtkitError, from_dict

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


# RFC 3986's unreserved characters: urllib.parse.quote's, without importing urllib.parse (and ipaddress), ~2 ms
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(text: str, safe: str = "/") -> str:
    """Percent-encode `text` (UTF-8) for a URL path or query part, as urllib.parse.quote does."""
    keep = _UNRESERVED | frozenset(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def path_of(*parts: str, query: dict[str, Any] | None = None) -> str:
    path = "/" + "/".join(quote(p, safe="") for p in parts)
    if query:
        items = [f"{quote(k)}={quote(str(v))}" for k, v in query.items() if v is not None]
        if items:
            path += "?" + "&".join(items)
    return path


class _Response:
    """Reads a response's status, headers and body off a connected socket."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        head = self._read_until(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise DaemonUnavailable(f"virtkitd sent a malformed status line: {lines[0]!r}")
        self.status = int(parts[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            if not self._fill():
                raise DaemonUnavailable("virtkitd closed the connection mid-response")
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise DaemonUnavailable("virtkitd closed the connection mid-response")
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def chunks(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self._read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    return
                yield self._read_exact(size)
                self._read_exact(2)
        elif "content-length" in self.headers:
            remaining = int(self.headers["content-length"])
            if self.buf:
                piece, self.buf = self.buf[:remaining], self.buf[remaining:]
                remaining -= len(piece)
                yield piece
            while remaining > 0:
                data = self.sock.recv(min(65536, remaining))
                if not data:
                    raise DaemonUnavailable("virtkitd closed the connection mid-response")
                remaining -= len(data)
                yield data
        else:
            if self.buf:
                yield self.buf
                self.buf = b""
            while self._fill():
                yield self.buf
                self.buf = b""

    def read(self) -> bytes:
        return b"".join(self.chunks())


class Transport:
    def __init__(self, socket_path: str, timeout: float | None = 600.0,
                 on_unavailable: Callable[[], None] | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self.on_unavailable = on_unavailable   # e.g. start the local daemon, then the request is retried once

    def _connect(self) -> _socket.socket:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            sock.close()
            if self.on_unavailable is None:
                raise DaemonUnavailable(
                    f"virtkitd not reachable at {self.socket_path}: {exc.strerror or exc}") from exc
            hook, self.on_unavailable = self.on_unavailable, None
            hook()
            return self._connect()
        return sock

    def open(self, method: str, path: str, body: Any = None) -> _Response:
        data = b"" if body is None else json.dumps(body).encode()
        head = (f"{method} {path} HTTP/1.1\r\nHost: virtkit\r\nConnection: close\r\n"
                f"Accept: application/json\r\nContent-Length: {len(data)}\r\n")
        if body is not None:
            head += "Content-Type: application/json\r\n"
        sock = self._connect()
        try:
            sock.sendall(head.encode() + b"\r\n" + data)
            resp = _Response(sock)
        except OSError as exc:
            sock.close()
            raise DaemonUnavailable(f"virtkitd connection failed: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        if resp.status >= 400:
            try:
                raw = resp.read()
            finally:
                sock.close()
            raise _error(resp.status, raw)
        return resp

    def request(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.open(method, path, body)
        try:
            raw = resp.read()
        finally:
            resp.sock.close()
        return json.loads(raw) if raw else None

    def stream(self, method: str, path: str, body: Any = None) -> Iterator[bytes]:
        resp = self.open(method, path, body)
        try:
            yield from resp.chunks()
        finally:
            resp.sock.close()


def _error(status: int, raw: bytes) -> VirtkitError:
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        return from_dict(data)
    if isinstance(data, dict) and "detail" in data:   # FastAPI's own validation errors
        from virtkit.core.errors import InvalidArgument

        return InvalidArgument(f"bad request: {data['detail']}")
    return VirtkitError(f"virtkitd answered HTTP {status}: {raw[:200]!r}")
