"""Interactive terminal sessions for `virtkit exec -t`: raw mode, stdin relay, window-size changes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import termios
import tty
from typing import Any

from virtkit.cli.output import write_out
from virtkit.client import Client


def exec_tty(client: Client, name: str, command: list[str], env: list[str]) -> int:
    interactive = os.isatty(0)
    saved = termios.tcgetattr(0) if interactive else None
    size = shutil.get_terminal_size()
    session: dict[str, Any] = {}

    def on_session(ws: Any) -> None:
        session["ws"] = ws

    def on_winch(*_: Any) -> None:
        ws = session.get("ws")
        if ws is not None:
            s = shutil.get_terminal_size()
            ws.send(json.dumps({"resize": [s.lines, s.columns]}))

    def stdin_chunks() -> Any:
        while True:
            data = os.read(0, 4096)
            if not data:
                return
            yield data

    if interactive:
        tty.setraw(0)
        signal.signal(signal.SIGWINCH, on_winch)
    try:
        return client.exec_stream(
            name, command, env=env, tty=True, stdin=stdin_chunks(), size=(size.lines, size.columns),
            on_stdout=write_out,
            on_session=on_session,
        )
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
