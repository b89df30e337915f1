"""Attaching to an instance over a WebSocket: its output from the log as it comes, input into its stdin (or terminal).

What `virtkit run -i/-t` speaks (the SDK's client/attach.py). Wire protocol:
  client -> server  text  {"start": bool, "stdin": bool, "logs": bool, "console": bool}   (first message; start:
                    start the instance first; logs (default true): its output from the start of the log, else only
                    what comes next; console: a VM's serial console, see below)
  client -> server  bytes stdin data;  text {"eof": true} ends stdin;  text {"resize": [rows, cols]}
  server -> client  bytes b"\\x01"+data (stdout, or the terminal), b"\\x02"+data (stderr)
  server -> client  text  {"exit_code": N, "reason": ...}  or  {"error": code, "message": ...}   (last message)

Output comes from the instance's log (from its start), so nothing is missed and stdout and stderr stay apart; input
goes through a copy of the stdin pipe (or the terminal's master) that the supervisor holds for the instance's life.
Ending stdin (or leaving) closes the instance's stdin, as `docker run -i` does (Docker's StdinOnce); with a
terminal it types ^D instead.

A console session (`virtkit console`, VMs only) reads the console log raw (kernel lines, prompts without a newline
and the guest terminal's \r\n as they are) and writes to the serial console's input, whatever -i the VM was made
with; leaving it, or ending its stdin, leaves the console as it was (it is the guest's, not the session's).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import struct
import termios
import threading
import time
from collections.abc import Iterator
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from virtkit.core.errors import InvalidArgument, InvalidState, VirtkitError


class _Stdin:
    """virtkitd's copy of the instance's stdin; closed at EOF (the instance reads EOF once no copy is left)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """All of `data`, as fast as the instance reads it; dropped once it has gone or the copy was closed."""
        view = memoryview(data)
        while view:
            with self.lock:     # never into an fd number closed (and maybe reused) meanwhile
                if self.fd is None:
                    return
                try:
                    # non-blocking (the supervisor's copy shares the flag and never blocks on it either): a full
                    # pipe must not hold the lock, or a close would wait for an instance that reads no more
                    os.set_blocking(self.fd, False)
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    n = 0
                except OSError:
                    return
            if n:
                view = view[n:]
            else:
                time.sleep(0.01)

    def resize(self, size: list[int]) -> None:
        with self.lock:
            if self.fd is not None:
                with contextlib.suppress(OSError, ValueError, TypeError, IndexError, struct.error):  # bad: ignored
                    rows, cols = int(size[0]), int(size[1])
                    fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


async def run_attach(ws: WebSocket, ctx: Any, name: str) -> None:
    svc = ctx.instances
    held: list[str] = []
    stdin = _Stdin(None)
    inst: Any = None
    console = False

    async def finish() -> None:
        """Stdin closed, hold dropped (an --rm instance that stopped goes now): before the client hears the end."""
        if stdin.fd is not None:
            stdin.close()
            if not console:
                with contextlib.suppress(VirtkitError):
                    await asyncio.to_thread(svc.close_stdin, inst.id)
        if held:
            await asyncio.to_thread(_release, svc, held.pop())

    try:
        try:
            req = json.loads(await ws.receive_text())
        except (ValueError, KeyError) as exc:
            raise InvalidArgument("attach: the first message must be a JSON request") from exc
        inst = svc.get(name)
        console = bool(req.get("console"))
        svc.hold(inst.id)
        held.append(inst.id)
        if req.get("start"):
            await asyncio.to_thread(svc.start, inst.id)
        # before stdin opens: the output to what the client types next must not fall before where reading starts
        gone = threading.Event()
        frames = ctx.follow_log(inst.id, True, tail=None if req.get("logs", True) else 0, cancelled=gone.is_set,
                                raw=console)
        if console and inst.type != "vm":
            raise InvalidArgument(f"console: {inst.type} instances have no serial console (use `virtkit attach "
                                  f"{inst.name}` or `virtkit exec -it {inst.name} sh`)")
        if console:
            if req.get("stdin"):
                stdin.fd = await asyncio.to_thread(svc.open_console, inst.id)
        elif req.get("stdin"):
            try:
                stdin.fd = svc.open_stdin(inst.id)
            except InvalidState:
                if not req.get("start"):
                    raise
                # it has run and ended already (a quick command): nothing to type into, its output still comes
        status = await _relay(ws, frames, gone, ctx, inst, stdin, console)
        await finish()
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps(status))
    except VirtkitError as exc:
        await finish()      # when start failed, an --rm instance goes too (nothing ran)
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps(exc.to_dict()))
    except WebSocketDisconnect:
        pass
    finally:
        await finish()
    with contextlib.suppress(Exception):
        await ws.close()


def _release(svc: Any, instance_id: str) -> None:
    svc.release(instance_id)
    from virtkit.core.errors import NotFound
    from virtkit.core.models import InstanceState

    with contextlib.suppress(NotFound):
        inst = svc.get(instance_id)
        if inst.state == InstanceState.CREATED and inst.spec.get("auto_remove"):
            svc.remove(instance_id)


async def _relay(ws: WebSocket, frames: Iterator[bytes], gone: threading.Event, ctx: Any, inst: Any,
                 stdin: _Stdin, console: bool = False) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
    tty = bool(inst.spec.get("tty"))

    def read_log() -> None:
        # frames of the log until the instance stops: kind 1/2 output, 3 the exit status
        try:
            buf = b""
            # a hold of its own, inside the session's: the instance stays until the session has its exit status
            for chunk in frames:
                buf += chunk
                while len(buf) >= 5 and len(buf) >= 5 + int.from_bytes(buf[1:5], "big"):
                    size = int.from_bytes(buf[1:5], "big")
                    loop.call_soon_threadsafe(out.put_nowait, (buf[0], buf[5:5 + size]))
                    buf = buf[5 + size:]
        finally:
            loop.call_soon_threadsafe(out.put_nowait, None)

    async def feed() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                gone.set()
                return
            if msg.get("bytes"):
                await asyncio.to_thread(stdin.write, msg["bytes"])
            elif msg.get("text"):
                ctl = json.loads(msg["text"])
                if "resize" in ctl and tty:
                    stdin.resize(ctl["resize"])
                elif ctl.get("eof") and stdin.fd is not None:
                    if console:
                        stdin.close()
                    elif tty:
                        await asyncio.to_thread(stdin.write, b"\x04")
                    else:
                        stdin.close()
                        await asyncio.to_thread(ctx.instances.close_stdin, inst.id)

    reader = loop.run_in_executor(None, read_log)
    feeder = asyncio.create_task(feed())
    status: dict[str, Any] = {"exit_code": None, "reason": "stream ended"}
    try:
        while (item := await out.get()) is not None:
            kind, data = item
            if kind in (1, 2):
                try:
                    await ws.send_bytes(bytes([kind]) + data)
                except Exception as exc:   # the client has gone (the connection's own error types vary)
                    raise WebSocketDisconnect() from exc
            elif kind == 3:
                status = json.loads(data)
    finally:
        gone.set()
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await feeder
        await reader
    return status

