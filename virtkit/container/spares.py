"""Spares: a container's PID 1 made before the container is asked for, kept by the supervisor.

Making a container's namespaces is the costliest part of its start that does not depend on the container:
fork the runtime, unshare pid/net/uts/ipc, fork PID 1, bring its loopback up (~5 ms of a ~15 ms start here).
The supervisor makes one spare per kind of container it was asked for, while it has nothing else to do; a create
that finds one hands it the spec, its fds and its cgroup, and the spare goes on as stage 2 (container/init.py).
Only what cannot go stale is made early: the mount namespace (a copy of the host's mounts at that moment) and
the cgroup namespace (rooted at the container's cgroup) are made once the spare is taken. A spare exits when the
supervisor goes away (its channel closes); the supervisor kills the ones it holds when it stops.
"""

from __future__ import annotations

import _signal as signal
import _socket
import os

from virtkit.container import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def kind_of(flags: int, joins: list[tuple[str, int]]) -> int | None:
    """The spare kind a container with these namespaces can use (its early flags), or None when it cannot:
    a user namespace, a joined namespace other than the network, or a kind of namespace spares do not make."""
    from virtkit.container.init import LATE_FLAGS, SPARE_FLAGS

    if not flags & sc.CLONE_NEWPID or flags & ~(SPARE_FLAGS | LATE_FLAGS):
        return None
    if any(typ != "network" for typ, _fd in joins):
        return None
    return flags & SPARE_FLAGS


class Spares:
    def __init__(self, per_kind: int = 1) -> None:
        self.per_kind = per_kind
        # kind -> spares made: [pid of its PID 1 (0 until it reported), its channel]
        self.ready: dict[int, list[list[Any]]] = {}
        self.wanted: set[int] = set()

    def take(self, kind: int) -> tuple[int, _socket.socket] | None:
        """A spare of this kind (its pid and channel; the caller owns both), or None; either way this kind is
        made again the next time fill() runs."""
        self.wanted.add(kind)
        held = self.ready.get(kind) or []
        while held:
            spare = held.pop()
            if _reported(spare, kind, self.wanted) and _runs_now(spare[0]):
                return spare[0], spare[1]
            spare[1].close()    # one still being made (or gone): its channel closes, it exits
        return None

    def short(self) -> bool:
        return any(len(self.ready.get(kind) or []) < self.per_kind for kind in self.wanted)

    def fill(self) -> None:
        """Start the spares that are missing: a fork each (~1.5 ms of this process); the spare makes its
        namespaces on its own and reports its pid, read when it is taken."""
        for kind in list(self.wanted):
            held = self.ready.setdefault(kind, [])
            while len(held) < self.per_kind:
                try:
                    held.append([0, _start(kind)])
                except OSError as exc:  # out of processes or memory: containers of this kind start the usual way
                    import sys

                    print(f"supervisor: cannot make a spare container: {exc}", file=sys.stderr, flush=True)
                    self.wanted.discard(kind)
                    break

    def forget(self, pid: int) -> bool:
        """A spare that died (reaped by the supervisor): dropped. Whether pid was one."""
        for held in self.ready.values():
            for i, spare in enumerate(held):
                if spare[0] == pid:
                    spare[1].close()
                    del held[i]
                    return True
        return False

    def close(self) -> None:
        """Every spare held goes (killed when it reported its pid; the others see their channel close)."""
        for held in self.ready.values():
            for pid, ch in held:
                ch.close()
                if pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            held.clear()
        self.wanted.clear()


def _start(kind: int) -> _socket.socket:
    from virtkit.container import init as initmod

    parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        if os.fork() == 0:
            parent.close()
            initmod.spare_stage1(child, kind)
    finally:
        child.close()
    return parent


def _reported(spare: list[Any], kind: int, wanted: set[int]) -> bool:
    """Whether the spare has its pid: its report came long ago in the usual case, and is not waited for (a spare
    is made at the lowest priority: on a busy host it may not be ready). A spare that failed stops this kind of
    spare (the host cannot make them: its containers start the usual way)."""
    if spare[0]:
        return True
    from virtkit.container import fastjson

    try:
        data = spare[1].recv(1 << 16, _socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    msg = fastjson.loads(data) if data else None
    if msg and msg.get("type") == "pid":
        spare[0] = int(msg["pid"])
        return True
    wanted.discard(kind)
    if msg:
        import sys

        print(f"supervisor: cannot make spare containers: {msg.get('message')}", file=sys.stderr, flush=True)
    return False


def _runs_now(pid: int) -> bool:
    """Alive, and from now on at the usual priority: it waited as SCHED_IDLE, and on a busy host it would not get
    to read its container before the CPUs are free (it sets this itself too, once it runs)."""
    try:
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
        return True
    except (ProcessLookupError, PermissionError):
        return False


def go(ch: _socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    """Hand a taken spare its container: the message (JSON) with the fds riding on it."""
    import struct

    from virtkit.container import fastjson

    ch.sendmsg([fastjson.dumps(message).encode()],
               [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
