"""One `exec` over a WebSocket: runs the runtime's exec and relays stdin, stdout/stderr (or a PTY) and the exit code.

Wire protocol (the SDK speaks it):
  client -> server  text  {"command": [...], "tty": bool, "interactive": bool, "env": [...]}   (first message)
  client -> server  bytes stdin data;  text {"eof": true} closes stdin;  text {"resize": [rows, cols]}
  server -> client  bytes b"\\x01"+data (stdout or the PTY), b"\\x02"+data (stderr)
  server -> client  text  {"exit_code": N}  or  {"error": code, "message": ...}   (last message)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import struct
import tempfile
import termios
from typing import Any

from fastapi import WebSocket, WebSocketDisconnect

from virtkit.core.errors import InvalidArgument, VirtkitError


async def run_exec(ws: WebSocket, ctx: Any, name: str) -> None:
    try:
        try:
            req = json.loads(await ws.receive_text())
        except (ValueError, KeyError) as exc:
            raise InvalidArgument("exec: the first message must be a JSON request") from exc
        if req.get("tty"):
            code = await _exec_tty(ws, ctx, name, req)
        else:
            code = await _exec_pipes(ws, ctx, name, req)
        await ws.send_text(json.dumps({"exit_code": code}))
    except VirtkitError as exc:
        await ws.send_text(json.dumps(exc.to_dict()))
    except WebSocketDisconnect:
        return
    with contextlib.suppress(Exception):
        await ws.close()


async def _exec_pipes(ws: WebSocket, ctx: Any, name: str, req: dict[str, Any]) -> int:
    # in a thread: a VM's exec_argv waits for its guest agent to answer (seconds while the VM boots)
    argv = await asyncio.to_thread(ctx.instances.exec_argv, name, req.get("command") or [], tty=False,
                                   env=req.get("env"))
    interactive = bool(req.get("interactive"))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if interactive else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )

    async def pump(stream: asyncio.StreamReader, tag: bytes) -> None:
        while True:
            data = await stream.read(65536)
            if not data:
                return
            await ws.send_bytes(tag + data)

    async def feed() -> None:
        assert proc.stdin is not None
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return
            if msg.get("bytes"):
                proc.stdin.write(msg["bytes"])
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()
            elif msg.get("text") and json.loads(msg["text"]).get("eof"):
                proc.stdin.close()
                return

    assert proc.stdout is not None and proc.stderr is not None
    feeder = asyncio.create_task(feed()) if interactive else None
    await asyncio.gather(pump(proc.stdout, b"\x01"), pump(proc.stderr, b"\x02"))
    code = await proc.wait()
    if feeder:
        feeder.cancel()
    return _exit_code(code)


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


async def _exec_tty(ws: WebSocket, ctx: Any, name: str, req: dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="virtkit-console-") as tmp:
        path = os.path.join(tmp, "console.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(1)
        listener.settimeout(10)
        argv = ctx.instances.exec_argv(name, req.get("command") or [], tty=True, env=req.get("env"),
                                       console_socket=path)
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            master = await loop.run_in_executor(None, _receive_master, listener)
        except OSError as exc:
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode(errors="replace").strip()
            await proc.wait()
            from virtkit.core.errors import SystemFailure

            raise SystemFailure(f"exec: no terminal from the runtime: {err or exc}") from exc
        finally:
            listener.close()
    if req.get("size"):
        _resize(master, req["size"])
    os.set_blocking(master, False)
    out_q: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        out_q.put_nowait(data)
        if not data:
            loop.remove_reader(master)

    loop.add_reader(master, readable)

    async def pump() -> None:
        while True:
            data = await out_q.get()
            if not data:
                return
            await ws.send_bytes(b"\x01" + data)

    async def feed() -> None:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return
            if msg.get("bytes"):
                with contextlib.suppress(OSError):
                    os.write(master, msg["bytes"])
            elif msg.get("text"):
                ctl = json.loads(msg["text"])
                if "resize" in ctl:
                    _resize(master, ctl["resize"])
                elif ctl.get("eof"):
                    with contextlib.suppress(OSError):
                        os.write(master, b"\x04")

    feeder = asyncio.create_task(feed())
    pumper = asyncio.create_task(pump())
    code = await proc.wait()
    # the runtime has exited with the process: drain what the terminal still holds
    await asyncio.sleep(0.05)
    loop.remove_reader(master)
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        out_q.put_nowait(data)
    out_q.put_nowait(b"")
    await pumper
    feeder.cancel()
    os.close(master)
    return _exit_code(code)


def _receive_master(listener: socket.socket) -> int:
    conn, _ = listener.accept()
    with conn:
        _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
    if not fds:
        raise OSError("the runtime sent no terminal")
    return fds[0]


def _resize(fd: int, size: list[int]) -> None:
    rows, cols = int(size[0]), int(size[1])
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
