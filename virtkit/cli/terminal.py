"""Interactive terminal sessions for `virtkit exec -t` and `virtkit run -i/-t`: raw mode, stdin relay, resizes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import termios
import tty
from typing import Any

from virtkit.cli.output import write_err, write_out
from virtkit.client import Client


def exec_tty(client: Client, name: str, command: list[str], env: list[str]) -> int:
    interactive = os.isatty(0)
    saved = termios.tcgetattr(0) if interactive else None
    size = _terminal_size()
    session: dict[str, Any] = {}

    def on_session(ws: Any) -> None:
        session["ws"] = ws

    def on_winch(*_: Any) -> None:
        ws = session.get("ws")
        if ws is not None:
            s = _terminal_size()
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


def _terminal_size() -> os.terminal_size:
    """The size of the terminal we are on, from the terminal itself: $COLUMNS/$LINES (what shutil reads first)
    are often stale or set by whoever started us, and the instance's terminal must match the one it shows on."""
    for fd in (1, 0, 2):
        try:
            return os.get_terminal_size(fd)
        except OSError:
            continue
    return shutil.get_terminal_size()


def _stdin_chunks() -> Any:
    while True:
        data = os.read(0, 4096)
        if not data:
            return
        yield data


def run_attached(client: Client, image: str, command: list[str], options: dict[str, Any], *,
                 interactive: bool, terminal: bool) -> dict[str, Any]:
    """`virtkit run -i/-t` in the foreground: our stdin to the instance's (-i), its terminal on ours (-t)."""
    if terminal and os.isatty(1):
        size = _terminal_size()
        options = {**options, "console_size": [size.lines, size.columns]}

    def session(stdin: Any, on_session: Any) -> dict[str, Any]:
        return client.run(image, command, output=write_out, error_output=write_err, stdin=stdin,
                          on_session=on_session, interactive=interactive or None, tty=terminal or None, **options)

    return _with_terminal(session, interactive=interactive, terminal=terminal)


def attach(client: Client, name: str, *, stdin: bool) -> dict[str, Any]:
    """`virtkit attach`: what the instance writes from now on; our stdin to it if it has one (-i/-t)."""
    spec = client.instance(name)["spec"]
    interactive = stdin and bool(spec.get("interactive") or spec.get("tty"))

    def session(chunks: Any, on_session: Any) -> dict[str, Any]:
        return client.attach(name, write_out, write_err, stdin=chunks, logs=False, on_session=on_session)

    # the terminal we join was made at another size (or none): make it ours
    return _with_terminal(session, interactive=interactive, terminal=bool(spec.get("tty")), resize_at_start=True)


DETACH_KEY = b"\x1d"     # Ctrl-]: leaves `virtkit console`, as it leaves virsh console and telnet


def console(client: Client, name: str, *, stdin: bool, logs: bool) -> dict[str, Any]:
    """`virtkit console`: a VM's serial console on our terminal (raw: the guest's terminal echoes and edits), our
    keys to it; Ctrl-] on a terminal detaches and leaves the VM running. From a pipe, every byte goes to the VM."""
    on_tty = stdin and os.isatty(0)
    state: dict[str, Any] = {"detached": False}
    if on_tty:
        print(f"Connected to {name} (detach with Ctrl-])", file=sys.stderr, flush=True)

    def chunks() -> Any:
        for data in _stdin_chunks():
            if on_tty and DETACH_KEY in data:
                before = data.split(DETACH_KEY, 1)[0]
                if before:
                    yield before
                state["detached"] = True
                if state.get("ws") is not None:
                    state["ws"].close()
                return
            yield data

    def session(stdin_chunks: Any, on_session: Any) -> dict[str, Any]:
        def keep(ws: Any) -> None:
            state["ws"] = ws
            on_session(ws)

        return client.console(name, write_out, stdin=stdin_chunks, logs=logs, on_session=keep,
                              detached=lambda: bool(state["detached"]))

    status = _with_terminal(session, interactive=stdin, terminal=True, chunks=chunks)
    if on_tty:
        print(f"\r\nDetached from {name}" if state["detached"] else "", file=sys.stderr, flush=True)
    return status


def _with_terminal(session: Any, *, interactive: bool, terminal: bool,
                   resize_at_start: bool = False, chunks: Any = None) -> dict[str, Any]:
    """Run `session(stdin chunks or None, on_session)` with our terminal raw (-i with -t on a tty) and window-size
    changes sent as they happen; the terminal is restored whatever happens."""
    raw = terminal and interactive and os.isatty(0)
    saved = termios.tcgetattr(0) if raw else None
    state: dict[str, Any] = {}

    def send_size(*_: Any) -> None:
        ws = state.get("ws")
        if ws is not None:
            s = _terminal_size()
            ws.send(json.dumps({"resize": [s.lines, s.columns]}))

    def on_session(ws: Any) -> None:
        state["ws"] = ws
        if raw and resize_at_start:
            send_size()

    if raw:
        tty.setraw(0)
        signal.signal(signal.SIGWINCH, send_size)
    try:
        return dict(session((chunks or _stdin_chunks)() if interactive else None, on_session))
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSADRAIN, saved)
