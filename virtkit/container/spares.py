"""Spares: a container's PID 1 made before the container is asked for, kept by the supervisor.

Making a container's namespaces is the costliest part of its start that does not depend on the container:
fork PID 1 into a new pid namespace, unshare net/uts/ipc, bring its loopback up (~5 ms of a ~15 ms start here).
Spares are made by the spare maker, a copy of the supervisor forked once that forks each spare straight into a
new pid namespace as the supervisor's own child (clone with CLONE_PARENT: syscalls.fork_sibling). Why not fork
them from the supervisor: a fork copies the forked process's page tables, and from then on every page either
side writes is copied while the other still shares it. The supervisor writes all over its heap for every
container it starts and ends, so each spare it forked cost it ~1.7 ms of page copies (perf, here) on the path of
the next container's start and exit; the maker writes next to nothing between its forks.
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
    from typing import Any, NoReturn


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
        self.maker: _Maker | None = None
        self.asked: dict[int, tuple[int, str | None]] = {}   # request number -> (kind, cgroup): being made
        self._asks = 0
        self._makers_lost = 0

    def take(self, kind: int, cgroup_parent: str | None = None) -> tuple[int, _socket.socket, str | None] | None:
        """A spare of this kind (its pid, its channel and the cgroup it waits in, or None when it has none of
        its own; the caller owns all three), or None; either way this kind is made again the next time fill()
        runs, its spares' cgroups under `cgroup_parent` from then on."""
        self.wanted.add(kind)
        if cgroup_parent is not None:
            self.parents[kind] = cgroup_parent
        self.collect()
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

    def _count(self, kind: int) -> int:
        return len(self.ready.get(kind) or []) + sum(1 for k, _cg in self.asked.values() if k == kind)

    def short(self) -> bool:
        return any(self._count(kind) < self.per_kind for kind in self.wanted)

    def fill(self) -> None:
        """Ask the maker for the spares that are missing (a message each); it forks them, and each makes its
        namespaces on its own and reports ready, read when it is taken."""
        for kind in list(self.wanted):
            while self._count(kind) < self.per_kind:
                cgroup = self._made_cgroup(kind)
                self._asks += 1
                try:
                    if self.maker is None:
                        self.maker = _Maker()
                except OSError as exc:  # no processes or memory: this kind starts the usual way
                    _log(f"cannot make a spare container: {exc}")
                    self._drop_cgroup(cgroup)
                    self.wanted.discard(kind)
                    break
                try:
                    self.maker.ask(self._asks, kind, cgroup)
                except OSError as exc:  # it died, not reaped yet: the next fill makes another
                    _log(f"the spare maker went away: {exc}")
                    self._drop_cgroup(cgroup)
                    self._lose_maker()
                    return
                self.asked[self._asks] = (kind, cgroup)

    def collect(self) -> None:
        """Take in the spares the maker has made since (without waiting for any)."""
        if self.maker is None:
            return
        for n, pid, ch, error in self.maker.made():
            kind, cgroup = self.asked.pop(n, (None, None))
            if kind is None:        # asked of a maker since replaced
                if ch is not None:
                    ch.close()
                continue
            if error is not None:
                _log(f"cannot make a spare container: {error}")
                self._drop_cgroup(cgroup)
                self.wanted.discard(kind)
                continue
            self.ready.setdefault(kind, []).append([pid, ch, cgroup, False])

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

    def _lose_maker(self) -> None:
        """The maker died: what it was asked for is given up (asked again of the next one, which the next fill
        makes); one that keeps dying stops spares altogether, containers start the usual way."""
        assert self.maker is not None
        self.maker.close()
        self.maker = None
        for _kind, cgroup in self.asked.values():
            self._drop_cgroup(cgroup)
        self.asked.clear()
        self._makers_lost += 1
        if self._makers_lost > MAKERS_LOST_MAX:
            _log(f"the spare maker died {self._makers_lost} times: no more spares")
            self.wanted.clear()

    def forget(self, pid: int) -> bool:
        """A process the supervisor reaped that was no container: a spare that died is dropped (and its cgroup),
        and a maker that died is made again when next needed (what it was asked for is asked again); the cgroups
        of spares let go earlier are removed once empty. Whether pid was a spare held."""
        if self.maker is not None and pid == self.maker.pid:
            self._lose_maker()
            return False
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

        if self.maker is not None:
            self.maker.close(kill=True, reap=reap)
            self.maker = None
        for _kind, cgroup in self.asked.values():
            if cgroup is not None:
                self.leftover.add(cgroup)
        self.asked.clear()
        killed = []
        for held in self.ready.values():
            for pid, ch, cgroup, _ready in held:
                ch.close()
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
                if cgroup is not None:
                    self.leftover.add(cgroup)
            held.clear()
        for pid in killed if reap else ():
            try:
                os.waitpid(pid, 0)      # ours (the maker made them our children), killed: at once
            except ChildProcessError:
                pass
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


# how many times the maker may die (and be made again) before a supervisor makes no more spares
MAKERS_LOST_MAX = 3

# what ps shows for the maker (a process's name: 15 bytes at most); a waiting spare is init.SPARE_NAME
MAKER_NAME = "vk-spare-maker"


def _log(message: str) -> None:
    import sys

    print(f"supervisor: {message}", file=sys.stderr, flush=True)


class _Maker:
    """The spare maker: a copy of its owner (forked once, here) that forks a spare for each request on its
    socket (JSON {"n", "kind", "cgroup"}) and answers {"n", "pid"} with the spare's channel riding on it, or
    {"n", "error"}. It exits when its owner closes the socket, or dies."""

    def __init__(self) -> None:
        ours, its = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
        try:
            pid = os.fork()
            if pid == 0:
                ours.close()
                _maker_main(its)
        except BaseException:
            ours.close()
            raise
        finally:
            its.close()
        self.pid, self.sock = pid, ours

    def ask(self, n: int, kind: int, cgroup: str | None) -> None:
        from virtkit.container import fastjson

        self.sock.send(fastjson.dumps({"n": n, "kind": kind, "cgroup": cgroup}).encode())

    def made(self) -> list[tuple[int, int, _socket.socket | None, str | None]]:
        """(request number, spare pid, its channel, error) of each answer waiting."""
        import struct

        from virtkit.container import fastjson

        out: list[tuple[int, int, _socket.socket | None, str | None]] = []
        while True:
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(4096, _socket.CMSG_SPACE(4), _socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:
                return out
            if not data:
                return out
            fds = [fd for level, typ, cdata in anc if level == _socket.SOL_SOCKET and typ == _socket.SCM_RIGHTS
                   for fd in struct.unpack(f"{len(cdata) // 4}i", cdata[:len(cdata) - len(cdata) % 4])]
            msg = fastjson.loads(data)
            ch = _socket.socket(fileno=fds[0]) if fds else None
            for fd in fds[1:]:
                os.close(fd)
            out.append((int(msg["n"]), int(msg.get("pid") or 0), ch, msg.get("error")))

    def close(self, kill: bool = False, reap: bool = False) -> None:
        self.sock.close()
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if reap:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass


def _maker_main(sock: _socket.socket) -> NoReturn:
    """The maker's life: fork a spare per request until the owner goes away."""
    import gc
    import struct

    from virtkit.container import fastjson, premount
    from virtkit.container import init as initmod

    del premount    # imported once here, not again in each spare

    gc.disable()    # a forked copy: a collection would write to (and so copy) every page of the heap
    try:
        keep = sock.fileno()
        os.closerange(3, keep)
        os.closerange(keep + 1, 1 << 20)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        initmod.name_this_process(MAKER_NAME)
        owner = os.getppid()
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != owner:
            os._exit(0)
    except BaseException:  # noqa: BLE001 - its owner sees the socket close and makes another
        os._exit(1)
    while True:
        try:
            data = sock.recv(4096)
        except OSError:
            data = b""
        if not data:
            os._exit(0)
        req = fastjson.loads(data)
        reply: dict[str, Any] = {"n": req["n"]}
        fds: list[int] = []
        parent = child = None
        try:
            parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC)
            pid = sc.fork_sibling(sc.CLONE_NEWPID)     # the owner's child, PID 1 of its own pid namespace
            if pid == 0:
                sock.close()
                parent.close()
                initmod.spare(child, req["kind"], req["cgroup"])
            reply["pid"] = pid
            fds = [parent.fileno()]
        except Exception as exc:  # noqa: BLE001 - told to the owner, which stops asking for this kind
            reply["error"] = str(exc)
        finally:
            if child is not None:
                child.close()
        try:
            sock.sendmsg([fastjson.dumps(reply).encode()],
                         [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else [])
        except OSError:
            os._exit(0)
        finally:
            if parent is not None:
                parent.close()


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
