"""The SDK side of attach: a WebSocket over the daemon's unix socket (protocol in virtkit/api/attach_session.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from virtkit.client.exec import feed_stdin
from virtkit.core.errors import DaemonUnavailable, from_dict


def attach_session(socket_path: str, name: str, *, start: bool, stdin: Iterator[bytes] | None,
                   on_stdout: Callable[[bytes], None] | None, on_stderr: Callable[[bytes], None] | None,
                   on_session: Callable[[Any], None] | None = None, logs: bool = True, console: bool = False,
                   detached: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Stream the instance's output (and feed `stdin`) until it stops; returns {"exit_code", "reason"}.

    console: a VM's serial console (raw output; `stdin` to the console). The caller may leave early by closing the
    session (on_session gives it) once `detached()` says so: then {"exit_code": None, "reason": "detached"}."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import unix_connect

    uri = f"ws://virtkit/v1/instances/{quote(name, safe='')}/attach"
    try:
        ws = unix_connect(socket_path, uri, max_size=None)
    except OSError as exc:
        raise DaemonUnavailable(f"virtkitd not reachable at {socket_path}: {exc}") from exc
    with ws:
        ws.send(json.dumps({"start": start, "stdin": stdin is not None, "logs": logs, "console": console}))
        if on_session:
            on_session(ws)
        if stdin is not None:
            feed_stdin(ws, stdin)
        while True:
            try:
                msg = ws.recv()
            except ConnectionClosed as exc:
                if detached is not None and detached():
                    return {"exit_code": None, "reason": "detached"}
                raise DaemonUnavailable("attach: the daemon closed the session without an exit status") from exc
            if isinstance(msg, bytes):
                handler = on_stdout if msg[:1] == b"\x01" else on_stderr
                if handler:
                    handler(msg[1:])
                continue
            data = json.loads(msg)
            if "error" in data:
                raise from_dict(data)
            return dict(data)
