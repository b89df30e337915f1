"""The SDK side of exec: a WebSocket over the daemon's unix socket (protocol in virtkit/api/exec_session.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from virtkit.core.errors import DaemonUnavailable, from_dict


def feed_stdin(ws: Any, stdin: Iterator[bytes]) -> None:
    """Send our input to a session in the background, then an EOF message; a closed session ends it quietly."""
    from websockets.exceptions import ConnectionClosed

    def feed() -> None:
        try:
            for data in stdin:
                ws.send(data)
            ws.send(json.dumps({"eof": True}))
        except ConnectionClosed:
            pass

    threading.Thread(target=feed, daemon=True).start()

def exec_session(socket_path: str, name: str, command: list[str], *, env: list[str], tty: bool,
                 stdin: Iterator[bytes] | None, size: tuple[int, int] | None,
                 on_stdout: Callable[[bytes], None] | None, on_stderr: Callable[[bytes], None] | None,
                 on_session: Callable[[Any], None] | None = None) -> int:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import unix_connect

    uri = f"ws://virtkit/v1/instances/{quote(name, safe='')}/exec"
    try:
        ws = unix_connect(socket_path, uri, max_size=None)
    except OSError as exc:
        raise DaemonUnavailable(f"virtkitd not reachable at {socket_path}: {exc}") from exc
    with ws:
        ws.send(json.dumps({"command": command, "env": env, "tty": tty, "interactive": stdin is not None,
                            "size": list(size) if size else None}))
        if on_session:
            on_session(ws)
        if stdin is not None:
            feed_stdin(ws, stdin)
        while True:
            try:
                msg = ws.recv()
            except ConnectionClosed as exc:
                raise DaemonUnavailable("exec: the daemon closed the session without an exit code") from exc
            if isinstance(msg, bytes):
                handler = on_stdout if msg[:1] == b"\x01" else on_stderr
                if handler:
                    handler(msg[1:])
                continue
            data = json.loads(msg)
            if "exit_code" in data:
                return int(data["exit_code"])
            raise from_dict(data)
