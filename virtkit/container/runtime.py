"""The OCI runtime's operations (create, start, state, kill, delete, run, exec, ...) as a library.

The `virtkit-runtime` command and the virtkit supervisor both drive this class. Process model as runc's:
create forks stage 1, which makes the namespaces and forks stage 2 (the container's PID 1) and exits;
stage 2 reports "ready" over a sync socket and blocks on <root>/<id>/exec.fifo until `start` opens it.
The supervisor's variations: a spare (container/spares.py) is a stage 2 made ahead of time, and its create
and start are one step (create(start=True): no fifo, the process follows "ready" at once; not with hooks).
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py builds enums at import (~3 ms a start)
import _socket  # the C module: socket.py builds enums at import, ~4 ms of every container start
import builtins
import os
import select
import time

from virtkit.container import state as st
from virtkit.core import errors as E

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~2 ms on the create path
    from collections.abc import Callable
    from typing import Any

DEFAULT_ROOT = "/run/virtkit-runtime"
OCI_VERSION = "1.2.0"


def _cgroup(path: str) -> Any:
    from virtkit.container.cgroups import manager_for

    return manager_for(path)


def _exit_code(status: int) -> int:
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _set_subreaper() -> None:
    from virtkit.container import syscalls as sc

    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)


def _raise_child_error(msg: dict[str, Any]) -> None:
    cls = getattr(E, msg.get("kind", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, E.VirtkitError)):
        cls = E.SystemFailure
    raise cls(msg.get("message", "container setup failed"))




def _read_byte(fd: int) -> bool:
    """One byte from the exec fifo (non-blocking); False when none is there yet (or no writer has opened it)."""
    try:
        return bool(os.read(fd, 1))
    except BlockingIOError:
        return False

class _Closing:
    """`with` for a _socket.socket (the C socket has no context manager; socket.py's is what we avoid)."""

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock

    def __enter__(self) -> _socket.socket:
        return self.sock

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

class Runtime:
    def __init__(self, root: str = DEFAULT_ROOT, spares: Any = None,
                 discard: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.spares = spares    # a container.spares.Spares (the supervisor's), or None: every create forks
        # what takes a deleted container's state dir away (virtkitd's trash: one rename on its path); None:
        # its files are removed there and then
        self.discard = discard
        self._just_created: tuple[st.StateDir, dict] | None = None

    # -- records --
    def _dir(self, container_id: str) -> st.StateDir:
        return st.StateDir(self.root, container_id)

    def _load(self, container_id: str) -> tuple[st.StateDir, dict[str, Any], str]:
        d = self._dir(container_id)
        rec = d.load()
        status = st.live_status(rec, d.fifo)
        if status in ("created", "running") and rec.get("cgroup"):
            try:
                if _cgroup(rec["cgroup"]).is_frozen():
                    status = "paused"
            except (E.VirtkitError, OSError):
                pass
        return d, rec, status

    def state(self, container_id: str) -> dict:
        _, rec, status = self._load(container_id)
        return st.oci_state(rec, status)

    def list(self) -> list[dict]:
        out = []
        try:
            names = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return []
        for name in names:
            try:
                out.append(self.state(name))
            except E.VirtkitError:
                continue
        return out

    # -- create --
    def create(self, container_id: str, bundle: str, *, pid_file: str | None = None,
               console_socket: str | None = None, no_pivot: bool = False, preserve_fds: int = 0,
               stdio: tuple[int, int, int] | None = None, start: bool = False) -> dict:
        """`start`: create and start in one (the supervisor's run): when the config has no hooks, the init goes
        on to its process as soon as it is ready, without the exec fifo's hand-over (one round trip between
        two processes less); with hooks, or without `start`, it waits for `start` as runc's does."""
        from virtkit.container import spec as specmod

        st.check_id(container_id)
        if not isinstance(preserve_fds, int) or preserve_fds < 0:
            raise E.InvalidArgument(f"preserve-fds: must be a non-negative integer (got {preserve_fds!r})")
        bundle = os.path.abspath(bundle)
        spec = specmod.load_bundle(bundle)
        d = self._dir(container_id)
        d.make()
        undo: builtins.list[Callable[[], None]] = [d.remove]
        try:
            return self._create(d, spec, bundle, undo, pid_file=pid_file, console_socket=console_socket,
                                no_pivot=no_pivot, preserve_fds=preserve_fds, stdio=stdio,
                                start=start and not spec.get("hooks"))
        except BaseException:
            for fn in reversed(undo):
                try:
                    fn()
                except Exception:  # noqa: BLE001 - keep undoing; the first error is what the user needs
                    pass
            raise

    def _create(self, d: st.StateDir, spec: dict, bundle: str, undo: builtins.list[Callable[[], None]], *,
                pid_file: str | None, console_socket: str | None, no_pivot: bool, preserve_fds: int,
                stdio: tuple[int, int, int] | None, start: bool) -> dict:
        from virtkit.container import hooks
        from virtkit.container import init as initmod
        from virtkit.container import namespaces as ns

        linux = spec.get("linux") or {}
        cg_path = linux.get("cgroupsPath") or f"/virtkit/{d.id}"
        cg = _cgroup(cg_path)
        undo.append(lambda: _kill_and_destroy(cg))
        resources = _resources(linux.get("resources"), linux.get("devices"))
        if not start:
            os.mkfifo(d.fifo, 0o622)
            # the umask took group/other write away; the container's root (maybe a mapped uid) must open it
            os.chmod(d.fifo, 0o622)
        rec: dict[str, Any] = {
            "ociVersion": spec.get("ociVersion", OCI_VERSION), "id": d.id, "status": "creating", "pid": 0,
            "bundle": bundle, "rootfs": spec["root"]["path"], "annotations": spec.get("annotations") or {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z",
            "cgroup": cg_path, "spec": spec,
        }
        hook_state = st.oci_state(rec, "creating")
        fifo_fd = -1 if start else os.open(d.fifo, os.O_PATH | os.O_CLOEXEC)
        flags, joins = ns.plan(spec)
        # imports and the seccomp program, made here as the host's root: after unshare(CLONE_NEWUSER) the
        # children may no longer read the Python library (e.g. under a 0700 /root)
        initmod.preload(spec)
        s1 = s2 = 0
        try:
            parent = None
            spare = None
            if self.spares is not None and stdio is not None and not preserve_fds:
                spare = self._take_spare(flags, joins, cg)
                if spare is not None:
                    undo.append(spare[1].close)     # a spare not handed its container sees EOF and exits
            # A spare that waited in a cgroup of its own is handed its container first: that cgroup is renamed to
            # the container's and limited while the spare builds the container (~0.5 ms of cgroupfs writes off
            # the start's path), and the spare waits for word of it before the container's process may run.
            # Not with hooks, which may look at the cgroup.
            made = spare[2] if spare is not None else None
            later = made is not None and not spec.get("hooks") and cg.can_adopt(made)
            if not later:
                self._make_cgroup(cg, resources, instead_of=made)
            if spare is not None and stdio is not None:
                handed = self._hand_to_spare(spare, spec, cg, flags, joins, stdio, fifo_fd, bundle,
                                             console_socket, no_pivot, hook_state, cgroup_later=later)
                if handed is not None:
                    s2, parent = handed
                    undo.append(parent.close)
            if later and parent is None:    # the spare went meanwhile: the container is forked, in a cgroup made now
                self._make_cgroup(cg, resources, instead_of=made)
            elif later and made is not None and parent is not None:
                if not cg.adopt(made):
                    self.spares.leftover.add(made.path)
                    raise E.SystemFailure(f"cgroup {cg.path}: cannot rename the spare's cgroup {made.path} to it")
                cg.apply(resources)
                initmod.send(parent, {"type": "ok"})    # its process may run now
            # its state ("creating"): saved while a spare builds the container, before a fork makes one
            d.save(rec)
            if parent is None:
                parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
                opts = {"stdio": stdio, "cgroup": cg, "ns_flags": flags, "ns_join": joins, "bundle": bundle,
                        "console_socket": console_socket, "no_pivot": no_pivot, "preserve_fds": preserve_fds,
                        "fifo_fd": fifo_fd, "hook_state": hook_state}
                try:
                    if _direct(flags, joins):
                        s2 = _fork_in_new_pid_namespace(parent, child, spec, opts)
                    else:
                        s1 = os.fork()
                        if s1 == 0:
                            parent.close()
                            initmod.stage1(child, spec, opts)
                finally:
                    child.close()
        finally:
            if fifo_fd >= 0:
                os.close(fifo_fd)
            for _, fd in joins:
                os.close(fd)
        s1_reaped = not s1

        def reap_s1() -> None:
            nonlocal s1_reaped
            if not s1_reaped:
                s1_reaped = True
                try:
                    os.waitpid(s1, 0)
                except ChildProcessError:
                    pass

        def kill_s2() -> None:
            reap_s1()
            if s2:
                try:
                    os.kill(s2, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait_gone(s2, st.proc_start_time(s2))

        undo.append(kill_s2)
        ready = False
        with _Closing(parent):
            while not (ready and s2):
                msg = initmod.recv(parent)
                if msg is None:
                    reap_s1()
                    raise E.SystemFailure(f"container {d.id!r}: init exited during setup")
                kind = msg["type"]
                if kind == "userns":
                    ns.write_id_maps(s1, linux)
                    initmod.send(parent, {"type": "ok"})
                elif kind == "pid":
                    s2 = msg["pid"]
                    reap_s1()
                elif kind == "hooks":
                    hs = hook_state | {"pid": s2}
                    hk = spec.get("hooks") or {}
                    hooks.run_hooks(hk.get("prestart"), hs, "prestart")
                    hooks.run_hooks(hk.get("createRuntime"), hs, "createRuntime")
                    initmod.send(parent, {"type": "ok"})
                elif kind == "ready":
                    ready = True
                elif kind == "error":
                    _raise_child_error(msg)
        status = "running" if start else "created"
        rec.update(status=status, pid=s2, start_time=st.proc_start_time(s2))
        d.save(rec)
        self._just_created = None if start else (d, rec)
        if pid_file:
            _write_pid_file(pid_file, s2)
        return st.oci_state(rec, status)

    def _take_spare(self, flags: int, joins: builtins.list[tuple[str, int]],
                    cg: Any) -> tuple[int, _socket.socket, Any] | None:
        """A spare for this container (its pid, its channel, and the cgroup it waits in when it has one of its
        own), or None when there is none of its kind."""
        from virtkit.container import spares

        kind = spares.kind_of(flags, joins)
        taken = self.spares.take(kind, os.path.dirname(cg.path)) if kind is not None else None
        if taken is None:
            return None
        pid, ch, made = taken
        return pid, ch, (_cgroup(made) if made is not None else None)

    def _make_cgroup(self, cg: Any, resources: Any, instead_of: Any) -> None:
        """The container's cgroup, made and limited; a spare's own cgroup that it does not become (`instead_of`)
        is removed once the spare has moved out of it."""
        if instead_of is not None:
            self.spares.leftover.add(instead_of.path)
        cg.create()
        cg.apply(resources)

    def _hand_to_spare(self, spare: tuple[int, _socket.socket, Any], spec: dict, cg: Any, flags: int,
                       joins: builtins.list[tuple[str, int]], stdio: tuple[int, int, int], fifo_fd: int,
                       bundle: str, console_socket: str | None, no_pivot: bool,
                       hook_state: dict, cgroup_later: bool) -> tuple[int, _socket.socket] | None:
        """The taken spare's PID 1 made this container's (in its cgroup, told the rest: container/spares.py), or
        None when it has gone since it was made (the caller forks as usual). `cgroup_later`: the spare stays in
        its own cgroup, which the caller renames to the container's and limits meanwhile; it waits for an "ok"
        before the container's process runs."""
        from virtkit.container import spares

        pid, ch, _made = spare
        seccomp = (spec.get("linux") or {}).get("seccomp")
        prog, prog_flags = (None, 0)
        if seccomp:
            from virtkit.container import seccomp as seccomp_mod

            prog, prog_flags = seccomp_mod.compile_bpf(seccomp)
        message = {"spec": spec, "flags": flags, "join_net": bool(joins), "bundle": bundle, "cgroup": cg.path,
                   "join_cgroup": not cgroup_later, "cgroup_later": cgroup_later,
                   "console_socket": console_socket, "no_pivot": no_pivot, "hook_state": hook_state,
                   "seccomp": prog.hex() if prog is not None else None, "seccomp_flags": prog_flags}
        try:
            message["fifo"] = fifo_fd >= 0
            spares.go(ch, message, [*stdio, *([fifo_fd] if fifo_fd >= 0 else []), *(fd for _typ, fd in joins)])
        except OSError:
            # gone since it was made, or it cannot join: no harm done to the container, which forks instead
            ch.close()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return None
        return pid, ch

    # -- start / kill / delete --
    def start(self, container_id: str) -> None:
        just_made = self._just_created
        self._just_created = None
        if just_made is not None and just_made[0].id == container_id:
            # made by this object a moment ago (run, the supervisor): its record is in hand, not read back; if it
            # died since, the start signal below finds no reader and says so
            d, rec = just_made
        else:
            d, rec, status = self._load(container_id)
            if status != "created":
                raise E.InvalidState(f"container {container_id!r} is {status}, not created")
        self._signal_start(container_id, d, rec)

    def _signal_start(self, container_id: str, d: st.StateDir, rec: dict) -> None:
        from virtkit.container import hooks

        try:
            fd = os.open(d.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise E.InvalidState(f"container {container_id!r} was already started") from None
        try:
            deadline = time.monotonic() + 10
            while not _read_byte(fd):
                left = deadline - time.monotonic()
                # a short-lived process may take the signal and exit before we look: read once more first
                if (left <= 0 or st.proc_start_time(rec["pid"]) is None) and not _read_byte(fd):
                    raise E.SystemFailure(f"container {container_id!r}: init did not take the start signal")
                select.select([fd], [], [], min(max(left, 0), 0.1))
        finally:
            os.close(fd)
        os.unlink(d.fifo)
        hooks.run_hooks((rec["spec"].get("hooks") or {}).get("poststart"),
                        st.oci_state(rec, "running"), "poststart", warn_only=True)

    def kill(self, container_id: str, sig: int = 15, all: bool = False) -> None:
        _, rec, status = self._load(container_id)
        if status == "stopped" or (status == "creating"):
            raise E.InvalidState(f"container {container_id!r} is not running")
        if all:
            _cgroup(rec["cgroup"]).kill_all(sig)
            return
        try:
            os.kill(rec["pid"], sig)
        except ProcessLookupError:
            raise E.InvalidState(f"container {container_id!r} is not running") from None

    def delete(self, container_id: str, force: bool = False) -> None:
        from virtkit.container import hooks

        try:
            d, rec, status = self._load(container_id)
        except E.NotFound:
            if not force:
                raise
            # runc's contract, which podman's cleanup relies on: --force on a container that is gone (or whose
            # create died before state.json was written) succeeds and clears what is left of its directory
            self._dir(container_id).remove()
            return
        # the OCI spec: deleting a container that is not stopped (created included) MUST be an error
        if status in ("created", "running", "paused") and not force:
            raise E.InvalidState(f"container {container_id!r} is {status}: stop it or use force")
        cg = _cgroup(rec["cgroup"])
        if status != "stopped":
            pid = rec["pid"]
            if status == "paused":
                cg.thaw()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(pid, rec.get("start_time"), reap=rec.get("execs") or [])
        _kill_and_destroy(cg)
        d.remove(self.discard)
        hooks.run_hooks((rec["spec"].get("hooks") or {}).get("poststop"),
                        st.oci_state(rec, "stopped"), "poststop", warn_only=True)

    def run(self, container_id: str, bundle: str, **kw: Any) -> int:
        """create + start + wait + delete; this process becomes a subreaper to wait for the init."""
        _set_subreaper()
        state = self.create(container_id, bundle, start=True, **kw)   # one step where the config has no hooks
        try:
            if state["status"] != "running":
                self.start(container_id)
            while True:
                try:
                    _, status = os.waitpid(state["pid"], 0)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    _wait_gone(state["pid"], None)
                    status = 0
                    break
            return _exit_code(status)
        finally:
            self.delete(container_id, force=True)

    # -- exec / ps / pause --
    def exec(self, container_id: str, process: dict, *, detach: bool = False, pid_file: str | None = None,
             console_socket: str | None = None, stdio: tuple[int, int, int] | None = None,
             preserve_fds: int = 0) -> int:
        from virtkit.container import init as initmod
        from virtkit.container import spec as specmod

        _, rec, cur = self._load(container_id)
        if cur not in ("created", "running"):
            raise E.InvalidState(f"container {container_id!r} is not running")
        proc = dict(rec["spec"]["process"])
        proc.pop("terminal", None)
        proc.pop("consoleSize", None)
        proc.update(process)
        specmod.validate_process(proc)
        cg = _cgroup(rec["cgroup"])
        initmod.preload({"linux": rec["spec"].get("linux") or {}, "process": proc})
        parent, child = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
        opts = {"stdio": stdio, "cgroup": cg, "console_socket": console_socket, "detach": detach,
                "preserve_fds": preserve_fds}
        try:
            mid = os.fork()
            if mid == 0:
                parent.close()
                initmod.exec_child(child, rec["pid"], proc, rec["spec"].get("linux") or {}, opts)
        finally:
            child.close()
        gpid = 0
        ready = False
        try:
            with _Closing(parent):
                while not (gpid and ready):
                    msg = initmod.recv(parent)
                    if msg is None:
                        raise E.SystemFailure(f"exec in {container_id!r}: setup process exited")
                    if msg["type"] == "pid":
                        gpid = msg["pid"]
                    elif msg["type"] == "ready":
                        ready = True
                    elif msg["type"] == "error":
                        _raise_child_error(msg)
        except BaseException:
            if gpid:
                try:
                    os.kill(gpid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.waitpid(mid, 0)
            raise
        if pid_file:
            _write_pid_file(pid_file, gpid)
        if detach:
            os.waitpid(mid, 0)
            # the pid namespace's init cannot finish dying while a zombie of it waits on us (when we are
            # the subreaper): delete reaps these
            rec.setdefault("execs", []).append(gpid)
            self._dir(container_id).save(rec)
            return gpid
        while True:
            try:
                _, status = os.waitpid(mid, 0)
                return _exit_code(status)
            except InterruptedError:
                continue

    def ps(self, container_id: str) -> builtins.list[int]:
        _, rec, status = self._load(container_id)
        if status == "stopped":
            return []
        return sorted(_cgroup(rec["cgroup"]).pids())

    def pause(self, container_id: str) -> None:
        _, rec, status = self._load(container_id)
        if status not in ("running", "created"):
            raise E.InvalidState(f"container {container_id!r} is {status}, cannot pause")
        _cgroup(rec["cgroup"]).freeze()

    def resume(self, container_id: str) -> None:
        _, rec, status = self._load(container_id)
        if status != "paused":
            raise E.InvalidState(f"container {container_id!r} is {status}, not paused")
        _cgroup(rec["cgroup"]).thaw()


def _resources(res: dict | None, devices: list | None = None) -> dict | None:
    """Drop leading "deny all" device rules (what `runc spec` and podman write first); allow linux.devices.

    virtkit's cgroup code always starts with deny-all plus the default allow set; the user's rules
    come after, so a user's leading deny-all would wipe the defaults (runc puts its defaults last).
    The nodes listed in linux.devices "MUST be available in the container": each gets an allow rule
    ahead of the user's rules (so an explicit deny still wins), as runc and crun do.
    """
    node_rules = [{"allow": True, "type": "b" if d.get("type") == "b" else "c", "major": d["major"],
                   "minor": d["minor"], "access": "rwm"}
                  for d in devices or [] if isinstance(d, dict) and d.get("type") in ("c", "u", "b")
                  and isinstance(d.get("major"), int) and isinstance(d.get("minor"), int)]
    if not res or not isinstance(res.get("devices"), list):
        if node_rules:
            return {**(res or {}), "devices": node_rules + list((res or {}).get("devices") or [])}
        return res
    rules = list(res["devices"])
    while rules and isinstance(rules[0], dict) and rules[0].get("allow") is False \
            and rules[0].get("type", "a") == "a" and rules[0].get("major") is None \
            and rules[0].get("minor") is None and rules[0].get("access", "rwm") == "rwm":
        rules.pop(0)
    return {**res, "devices": node_rules + rules}


def _direct(flags: int, joins: list[tuple[str, int]]) -> bool:
    """Whether PID 1 can be forked straight from here (init.stage2_direct): a new pid namespace, no user
    namespace (made first, it must own the others: stage 1 does that) and no namespace of those joined."""
    from virtkit.container import syscalls as sc

    return bool(flags & sc.CLONE_NEWPID) and not flags & sc.CLONE_NEWUSER \
        and all(typ not in ("user", "pid") for typ, _fd in joins)


def _fork_in_new_pid_namespace(parent: _socket.socket, child: _socket.socket, spec: dict, opts: dict) -> int:
    """Fork PID 1 of a new pid namespace without a stage 1: unshare(CLONE_NEWPID) changes only where this
    process's next child goes, and the runtime's own namespace is set back for later children (hooks)."""
    from virtkit.container import init as initmod
    from virtkit.container import namespaces as ns

    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pid = ns.fork_pid1(own)
        if pid == 0:
            parent.close()
            initmod.stage2_direct(child, spec, opts)
    finally:
        os.close(own)
    return pid


def _write_pid_file(path: str, pid: int) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.rename(tmp, path)


def _wait_gone(pid: int, start_time: int | None, timeout: float = 10.0, reap: tuple[int, ...] | list[int] = ()) -> None:
    """Wait until pid has exited (reaping it if it is our child); PID reuse is told by start time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for other in reap:
            try:
                os.waitpid(other, os.WNOHANG)
            except ChildProcessError:
                pass
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        now = st.proc_start_time(pid)
        if now is None or (start_time is not None and now != start_time):
            return
        time.sleep(0.002)
    raise E.SystemFailure(f"process {pid} did not exit within {timeout:g}s")


def _kill_and_destroy(cg: Any) -> None:
    if cg.exists() and not cg.remove_if_empty():
        cg.kill_all(signal.SIGKILL)
        cg.destroy()
