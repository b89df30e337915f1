"""Talking to a VM's QEMU over QMP with the QEMU project's `qemu.qmp` library: one short session per call.

A session per call (not one held open) because QEMU's QMP socket may change hands: virtkitd restarts and
reconnects, and one connection per call needs no reconnect logic. Each costs ~1-2 ms on a unix socket.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

from virtkit.core.errors import SystemFailure

TIMEOUT = 5.0


def _run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, also when called from inside an event loop's thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _session(socket_path: str, commands: list[tuple[str, dict[str, Any] | None]]) -> list[Any]:
    from qemu.qmp import QMPClient

    client = QMPClient("virtkit")
    try:
        await asyncio.wait_for(client.connect(socket_path), TIMEOUT)
        return [await asyncio.wait_for(client.execute(cmd, args), TIMEOUT) for cmd, args in commands]
    finally:
        try:
            await client.disconnect()
        except (EOFError, OSError):
            pass  # QEMU went away mid-session (it exited): what was asked has its own result or error


def execute(socket_path: str, command: str, args: dict[str, Any] | None = None) -> Any:
    """One QMP command; SystemFailure naming the command when QEMU cannot be reached or refuses."""
    from qemu.qmp import QMPError

    try:
        return _run(_session(socket_path, [(command, args)]))[0]
    # AssertionError: qemu.qmp's connect asserts its runstate, which QEMU closing the socket mid-handshake (it is
    # exiting) breaks; seen under load as a VM's command ends
    except (TimeoutError, QMPError, OSError, EOFError, AssertionError) as exc:
        raise SystemFailure(f"QMP {command} on {socket_path}: {exc or type(exc).__name__}") from exc


async def _fd_session(socket_path: str, fd: int, fdname: str, command: str, args: dict[str, Any]) -> Any:
    from qemu.qmp import QMPClient

    client = QMPClient("virtkit")
    try:
        await asyncio.wait_for(client.connect(socket_path), TIMEOUT)
        client.send_fd_scm(fd)
        await asyncio.wait_for(client.execute("getfd", {"fdname": fdname}), TIMEOUT)
        return await asyncio.wait_for(client.execute(command, args), TIMEOUT)
    finally:
        try:
            await client.disconnect()
        except (EOFError, OSError):
            pass


def execute_with_fd(socket_path: str, fd: int, fdname: str, command: str, args: dict[str, Any]) -> Any:
    """Hand QEMU a copy of `fd` (SCM_RIGHTS + getfd, named `fdname`), then run `command` in the same session
    (e.g. migrate to "fd:NAME": QEMU writes a file that it could not open itself)."""
    from qemu.qmp import QMPError

    try:
        return _run(_fd_session(socket_path, fd, fdname, command, args))
    except (TimeoutError, QMPError, OSError, EOFError, AssertionError) as exc:
        raise SystemFailure(f"QMP {command} on {socket_path}: {exc or type(exc).__name__}") from exc


def query_status(socket_path: str) -> dict[str, Any]:
    """{'status': 'running'|'paused'|'shutdown'|..., 'running': bool, ...}"""
    return dict(execute(socket_path, "query-status"))


def stop(socket_path: str) -> None:
    execute(socket_path, "stop")


def cont(socket_path: str) -> None:
    execute(socket_path, "cont")


def system_powerdown(socket_path: str) -> None:
    execute(socket_path, "system_powerdown")


def quit(socket_path: str) -> None:
    try:
        execute(socket_path, "quit")
    except SystemFailure:
        pass            # QEMU closes the socket as it exits; the reply may never come
