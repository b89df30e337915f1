"""Spares: a container's PID 1 made before the container is asked for, kept by the supervisor.

Making a container's namespaces is the costliest part of its start that does not depend on the container:
fork PID 1 into a new pid namespace, unshare net/uts/ipc, bring its loopback up (~5 ms of a ~15 ms start here).
A spare is forked straight into its pid namespace (namespaces.fork_pid1), not through a first process that
unshares and forks again: one fork of the supervisor's Python heap and no exit of one (~2 ms of CPU a spare).
The supervisor makes one spare per kind of container it was asked for, while it has nothing else to do; a create
that finds one hands it the spec, its fds and its cgroup, and the spare goes on as stage 2 (container/init.py).
Only what cannot go stale is made early: the mount namespace (a copy of the host's mounts at that moment) and
the cgroup namespace (rooted at the container's cgroup) are made once the spare is taken. A spare exits when the
supervisor goes away (its channel closes); the supervisor kills the ones it holds when it stops.

Its cgroup is made early too, where cgroups can be renamed (v1): once containers of a kind were asked for under
a parent cgroup, the kind's next spares wait in a cgroup of their own there (<parent>/.spare-<random>), which the
taker renames to the container's (a rename per hierarchy instead of a mkdir, the cpuset copied from the parent,
and the spare's move into it: ~1.2 ms of a start here). Elsewhere (v2) the spare joins the container's cgroup
when taken.
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
        # kind -> spares made: [pid of its PID 1, its channel, its cgroup or None, whether it reported ready]
        self.ready: dict[int, list[list[Any]]] = {}
        self.wanted: set[int] = set()
        self.parents: dict[int, str] = {}     # kind -> the parent cgroup its containers were last asked under
        self.leftover: set[str] = set()       # cgroups of spares dropped or moved out: removed once empty
        self._swept: set[str] = set()         # parents looked through for an earlier supervisor's spare cgroups

    def take(self, kind: int, cgroup_parent: str | None = None) -> tuple[int, _socket.socket, str | None] | None:
        """A spare of this kind (its pid, its channel and the cgroup it waits in, or None when it has none of
        its own; the caller owns all three), or None; either way this kind is made again the next time fill()
        runs, its spares' cgroups under `cgroup_parent` from then on."""
        self.wanted.add(kind)
        if cgroup_parent is not None:
            self.parents[kind] = cgroup_parent
        held = self.ready.get(kind) or []
        while held:
            spare = held.pop()
            if _reported(spare, kind, self.wanted) and _runs_now(spare[0]):
                return spare[0], spare[1], spare[2]
            spare[1].close()    # one still being made (or gone): its channel closes, it exits
            self._drop_cgroup(spare[2])
        return None

    def _drop_cgroup(self, path: str | None) -> None:
        """Remove a spare's cgroup now, or once its process is gone (tried again at every reap)."""
        if path is not None:
            self.leftover.add(path)
        for left in list(self.leftover):
            try:
                if _cgroup(left).remove_if_empty():
                    self.leftover.discard(left)
            except Exception:  # noqa: BLE001 - a cgroup that cannot go now is tried again later
                pass

    def short(self) -> bool:
        return any(len(self.ready.get(kind) or []) < self.per_kind for kind in self.wanted)

    def fill(self) -> None:
        """Start the spares that are missing: a fork each (~1.5 ms of this process); the spare makes its
        namespaces on its own and reports its pid, read when it is taken."""
        for kind in list(self.wanted):
            held = self.ready.setdefault(kind, [])
            while len(held) < self.per_kind:
                try:
                    cgroup = self._made_cgroup(kind)
                    try:
                        held.append([*_start(kind, cgroup), cgroup, False])
                    except OSError:
                        self._drop_cgroup(cgroup)
                        raise
                except OSError as exc:  # out of processes or memory: containers of this kind start the usual way
                    import sys

                    print(f"supervisor: cannot make a spare container: {exc}", file=sys.stderr, flush=True)
                    self.wanted.discard(kind)
                    break

    def _made_cgroup(self, kind: int) -> str | None:
        """A cgroup for the next spare of this kind under its parent, made now; None where there is no parent
        yet or cgroups cannot be renamed (the spare joins its container's cgroup when taken)."""
        parent = self.parents.get(kind)
        if parent is None:
            return None
        if parent not in self._swept:
            # spares' cgroups an earlier supervisor of this home left (it was killed: its spares exited, their
            # cgroups stayed): removed once empty, as this one's own leftovers
            self._swept.add(parent)
            self.leftover.update(f"{parent}/{n}" for n in _cgroup(parent).children() if n.startswith(".spare-"))
        path = f"{parent}/.spare-{os.urandom(6).hex()}"
        cg = _cgroup(path)
        if cg.version != 1:
            self.parents.pop(kind, None)
            return None
        try:
            cg.create()
        except Exception as exc:  # noqa: BLE001 - no cgroup of its own: the spare joins its container's later
            import sys

            print(f"supervisor: cannot make a spare's cgroup {path}: {exc}", file=sys.stderr, flush=True)
            self.parents.pop(kind, None)
            self._drop_cgroup(path)
            return None
        return path

    def forget(self, pid: int) -> bool:
        """A process the supervisor reaped that was no container: a spare that died is dropped (and its cgroup);
        the cgroups of spares let go earlier are removed once empty. Whether pid was a spare held."""
        found = None
        for held in self.ready.values():
            for i, spare in enumerate(held):
                if spare[0] == pid:
                    spare[1].close()
                    del held[i]
                    found = spare
                    break
        self._drop_cgroup(found[2] if found else None)
        return found is not None

    def close(self, reap: bool = True) -> None:
        """Every spare held goes (killed when it reported its pid; the others see their channel close), and
        with them their cgroups. `reap`: the caller has no other children to wait for (no container runs): the
        spares are reaped here, as the supervisor that would have is stopping, and their cgroups removed."""
        import time

        for held in self.ready.values():
            for pid, ch, cgroup, _ready in held:
                ch.close()
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if cgroup is not None:
                    self.leftover.add(cgroup)
            held.clear()
        self.wanted.clear()
        deadline = time.monotonic() + 2.0
        while reap and self.leftover and time.monotonic() < deadline:
            try:
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
            except ChildProcessError:
                pass
            self._drop_cgroup(None)
            if self.leftover:
                time.sleep(0.005)


def _cgroup(path: str) -> Any:
    from virtkit.container.cgroups import manager_for

    return manager_for(path)


_OWN_PID_NS: int | None = None


def _start(kind: int, cgroup: str | None) -> tuple[int, _socket.socket]:
    """Fork a spare of this kind: its pid and its channel."""
    from virtkit.container import init as initmod
    from virtkit.container.namespaces import fork_pid1

    global _OWN_PID_NS
    if _OWN_PID_NS is None:
        _OWN_PID_NS = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
    try:
        pid = fork_pid1(_OWN_PID_NS)
        if pid == 0:
            parent.close()
            initmod.spare(child, kind, cgroup)
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    return pid, parent


def _reported(spare: list[Any], kind: int, wanted: set[int]) -> bool:
    """Whether the spare reported ready: its report came long ago in the usual case, and is not waited for (a spare
    is made at the lowest priority: on a busy host it may not be ready). A spare that failed stops this kind of
    spare (the host cannot make them: its containers start the usual way)."""
    if spare[3]:
        return True
    from virtkit.container import fastjson

    try:
        data = spare[1].recv(1 << 16, _socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        data = b""
    msg = fastjson.loads(data) if data else None
    if msg and msg.get("type") == "ready":
        spare[3] = True
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
