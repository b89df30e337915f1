"""The container supervisor: one subreaper per virtkit home that starts containers and records how they end.

Why one subreaper and not a monitor per container (conmon's design): a monitor costs every idle container a
process (conmon ~1-2 MB RSS, a Python monitor ~9 MB); the subreaper costs nothing per container. It is a separate
process from virtkitd, so killing or restarting virtkitd leaves containers running and their exits recorded.
Measured figures are in bench/results and the README.

Protocol: one JSON request per connection on $VIRTKIT_HOME/run/supervisor.sock, one JSON reply.
  {"op": "ping"}
  {"op": "run", "id": ID, "bundle": DIR, "log": FILE, "exit_file": FILE, "cgroup": PATH, "stdin": B, "tty": B}
      -> {"ok": true, "pid": N, "supervisor": {"pid": P, "start_time": T}}
  {"op": "stdin", "id": ID}        -> {"ok": true} with a copy of its stdin pipe (or terminal) as SCM_RIGHTS
  {"op": "close_stdin", "id": ID}  -> {"ok": true}; the container reads EOF once the copies handed out close too
The container's stdout and stderr are pipes (or its terminal) that the supervisor copies into the log file as CRI
records (container/logfile.py, container/stdio.py): the two streams apart, in the order they were read. When a
container's init exits, the supervisor copies what is left in its pipes, then writes exit_file atomically:
  {"code": N, "reason": "exited"|"killed by SIGx"|"oom-killed", "finished_at": T}
and then removes the container's cgroup, empty now (its pid namespace ended with its init).
The reply names the supervisor (pid and start time): virtkitd finds a container whose supervisor died while it ran
(nothing will record its exit) by checking that process, and records it itself (see ContainerDriver).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any

PR_SET_CHILD_SUBREAPER = 36


def _set_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _raise_nofile() -> None:
    """Every running container holds three of our fds (its two output pipes and its log): lift the soft limit to
    the hard one. Containers do not inherit it: virtkit's configs set their own RLIMIT_NOFILE."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def write_atomic(path: str, data: dict[str, Any], tmp_dir: str | None = None) -> None:
    """`path` written whole or not at all (a tmp file renamed over it). `tmp_dir`, on the same file system, keeps
    the tmp file out of path's directory: a reader watching that directory (DirWatch) is woken once, by the
    rename, not also by the tmp file's create, writes and close."""
    import threading

    name = f"{os.path.basename(path)}.tmp{os.getpid()}.{threading.get_ident()}"   # virtkitd may write from two threads
    tmp = os.path.join(tmp_dir or os.path.dirname(path), name)
    # rename makes it atomic for readers; no fsync: after a host crash the container is gone with the record
    with open(tmp, "w") as f:
        f.write(json.dumps(data))
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        if tmp_dir is None:
            raise
        write_atomic(path, data)    # another file system after all (EXDEV): beside it, then


def _hold_mount_namespace(pid: int) -> int | None:
    """An fd on the container's mount namespace, held until its exit is recorded: the kernel then takes its mounts
    down (some 25, the overlay among them) when this closes it, not in the init's exit before its parent may
    reap it. That exit, and with it the exit's record, comes ~0.5 ms sooner (exit to reap, median, this host)."""
    try:
        return os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:     # gone already, or no /proc: the exit takes its mounts down itself
        return None


def _let_go(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)


def describe_status(status: int, oom: bool) -> tuple[int, str]:
    """Exit code and reason, as Docker reports them: 128+N for a signal."""
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status), "exited"
    sig = os.WTERMSIG(status)
    if oom and sig == signal.SIGKILL:
        return 128 + sig, "oom-killed"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return 128 + sig, f"killed by {name}"


def identity(pid: int) -> dict[str, Any] | None:
    """What tells this process from a later one that reuses its pid: the pid and its start time."""
    from virtkit.container.state import proc_start_time

    start = proc_start_time(pid)
    return None if start is None else {"pid": pid, "start_time": start}


class Supervisor:
    def __init__(self, run_dir: str, runtime_root: str) -> None:
        self.run_dir = run_dir
        self.runtime_root = runtime_root
        self.socket_path = os.path.join(run_dir, "supervisor.sock")
        self.watched: dict[int, dict[str, Any]] = {}
        self._runtime: Any = None
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.stdio: dict[str, Any] = {}     # container id -> its ContainerIO, while it runs
        self.identity = identity(os.getpid())
        from virtkit.container.spares import Spares

        self.spares = Spares()

    @property
    def runtime(self) -> Any:
        if self._runtime is None:
            from virtkit.container.runtime import Runtime

            self._runtime = Runtime(self.runtime_root, spares=self.spares)
        return self._runtime

    # -- requests -------------------------------------------------------------------------------------
    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid(), "watched": len(self.watched)}
        if op == "run":
            return self._run(req)
        if op in ("stdin", "close_stdin"):
            return self._stdin(req, close=op == "close_stdin")
        if op == "shutdown":
            # only when idle: with running containers it must stay, or their exits would go unrecorded
            if self.watched and not req.get("force"):
                return {"ok": False, "error": "in_use",
                        "message": f"{len(self.watched)} container(s) still running under the supervisor"}
            self.stopping = True
            return {"ok": True}
        return {"ok": False, "error": "invalid_argument", "message": f"unknown supervisor op {op!r}"}

    def _run(self, req: dict[str, Any]) -> dict[str, Any]:
        from virtkit.container.stdio import ContainerIO

        cid, bundle = req["id"], req["bundle"]
        io = ContainerIO(req["log"], self.run_dir, stdin=bool(req.get("stdin")), tty=bool(req.get("tty")))
        try:
            # the runtime dup2()s the child's ends onto the container's 0, 1, 2 (which clears O_CLOEXEC there only)
            state = self.runtime.create(cid, bundle, stdio=io.child_stdio, console_socket=io.console_path,
                                        start=True)
        except BaseException:
            io.close()
            raise
        try:
            io.created()
        except BaseException:
            io.close()
            self.runtime.delete(cid, force=True)
            raise
        for fd in io.pipes:
            os.set_blocking(fd, False)
            self.sel.register(fd, selectors.EVENT_READ, io)
        pid = int(state["pid"])
        self.watched[pid] = {"id": cid, "exit_file": req["exit_file"], "cgroup": req.get("cgroup"), "io": io,
                             "mntns": _hold_mount_namespace(pid)}
        self.stdio[cid] = io
        try:
            if state["status"] != "running":    # its config has hooks: started apart, in their order
                self.runtime.start(cid)
        except BaseException:
            _let_go(self.watched.pop(pid, {}).get("mntns"))
            self._finish_io(cid, io)
            raise
        return {"ok": True, "pid": pid, "supervisor": self.identity}

    def _stdin(self, req: dict[str, Any], close: bool) -> dict[str, Any]:
        """A copy of a running container's stdin (its pipe or its terminal), or EOF on it."""
        from virtkit.core.errors import InvalidState

        io = self.stdio.get(str(req.get("id")))
        if io is None or io.input_fd is None:
            raise InvalidState(f"container {req.get('id')!r} is not running with its stdin open")
        if close:
            io.close_stdin()
            return {"ok": True}
        return {"ok": True, "_fd": io.input_fd}

    # -- output ---------------------------------------------------------------------------------------
    def _pump(self, io: Any, fd: int) -> None:
        if not io.pump(fd):
            self._close_output(io, fd)

    def _close_output(self, io: Any, fd: int) -> None:
        self.sel.unregister(fd)
        io.close_output(fd)

    def _finish_io(self, cid: str, io: Any) -> None:
        """The init is gone: copy what its output still holds and close its stdin. An output whose writers all
        exited (the usual case: a pid namespace ends with its init) is closed; one that a process outside it
        still holds stays watched."""
        for fd in list(io.pipes):
            if not io.pump(fd):
                self._close_output(io, fd)
        io.close_stdin()
        self.stdio.pop(cid, None)

    # -- reaping --------------------------------------------------------------------------------------
    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.watched.pop(pid, None)
            if info is None:
                self.spares.forget(pid)
                continue
            # before the exit is recorded: whoever reads the log after seeing the exit reads all of it
            self._finish_io(info["id"], info["io"])
            cg = None
            oom = False
            if info.get("cgroup"):
                from virtkit.container.cgroups import manager_for

                cg = manager_for(info["cgroup"])
                try:
                    oom = cg.oom_killed()
                except Exception:  # the cgroup may be gone already (force delete)
                    oom = False
            code, reason = describe_status(status, oom)
            try:
                write_atomic(info["exit_file"], {"code": code, "reason": reason, "finished_at": time.time()},
                             tmp_dir=self.run_dir)
            except OSError as exc:
                print(f"supervisor: cannot record exit of {info['id']}: {exc}", file=sys.stderr, flush=True)
            if cg is not None:
                # its pid namespace ended with its init: the cgroup is empty, and goes now, while virtkitd reads
                # the exit (the delete that follows finds it gone); one that is not empty is left to that delete
                try:
                    cg.remove_if_empty()
                except OSError:
                    pass
            _let_go(info["mntns"])      # its mounts are taken down here, the exit told already
            if self.spares.short():
                self.spares.fill()

    # -- main loop ------------------------------------------------------------------------------------
    def serve(self) -> None:
        _set_subreaper()
        _raise_nofile()
        # virtkit's instances use the default seccomp profile: compiled once here, every container forked from
        # this process inherits the program and installs it without running libseccomp
        from virtkit.container import seccomp

        seccomp.compile_bpf(seccomp.default_profile())
        # Everything imported so far is kept out of the collector's reach: a collection walks every tracked object
        # (writing its header), and after a fork each page so written is copied. Children disable it (init.py).
        self.runtime  # noqa: B018 - imported now, before the freeze
        from virtkit.container import init, spares, stdio  # noqa: F401

        gc.freeze()
        os.makedirs(self.run_dir, mode=0o700, exist_ok=True)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        old_umask = os.umask(0o177)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.socket_path)
        os.umask(old_umask)
        listener.listen(64)
        rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wfd)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        stop = False

        def _term(*_: Any) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _term)
        signal.signal(signal.SIGINT, _term)
        from virtkit.container.stdio import ContainerIO

        sel = self.sel
        sel.register(listener, selectors.EVENT_READ, "accept")
        sel.register(rfd, selectors.EVENT_READ, "signal")
        with open(os.path.join(self.run_dir, "supervisor.pid"), "w") as f:
            f.write(str(os.getpid()))
        self.reap()
        while not stop and not self.stopping:
            # spares are made right after a run is answered (while its container runs), after an exit is recorded
            # if one is still missing, or once nothing has happened for 20 ms: never while a container starts
            events = sel.select(timeout=0.02 if self.spares.short() else 1.0)
            if not events and self.spares.short():
                self.spares.fill()
            for key, _ in events:
                if isinstance(key.data, ContainerIO):
                    if key.fd in key.data.pipes:    # not closed earlier in this round (by a reap)
                        self._pump(key.data, key.fd)
                elif key.data == "signal":
                    try:
                        while os.read(rfd, 512):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                else:
                    self._serve_one(listener)
            self.reap()
        self.spares.close(reap=not self.watched)
        listener.close()
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass

    def _serve_one(self, listener: socket.socket) -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(30)
            try:
                reply = self.handle(json.loads(_recv_line(conn)))
            except Exception as exc:  # every failure goes back to the caller as a structured error
                code = getattr(exc, "code", "system_failure")
                reply = {"ok": False, "error": code if isinstance(code, str) else "system_failure",
                         "message": getattr(exc, "message", None) or str(exc)}
            fd = reply.pop("_fd", None)
            try:
                data = json.dumps(reply).encode() + b"\n"
                if fd is None:
                    conn.sendall(data)
                else:   # the fd rides on the reply's first bytes; a reply this small goes in one message
                    socket.send_fds(conn, [data], [fd])
            except OSError:
                pass
        if self.spares.short():     # the one a run took, made again while that container runs
            self.spares.fill()


def _recv_line(sock: socket.socket) -> bytes:
    """One newline-terminated message (or what came before the peer closed)."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def call(socket_path: str, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Send one request to the supervisor; raise the virtkit error it reports."""
    reply, fds = _call(socket_path, request, timeout)
    for fd in fds:
        os.close(fd)
    return reply


def call_fd(socket_path: str, request: dict[str, Any], timeout: float = 60.0) -> tuple[dict[str, Any], int]:
    """A request whose reply carries one fd (the caller owns it)."""
    from virtkit.core.errors import SystemFailure

    reply, fds = _call(socket_path, request, timeout)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise SystemFailure(f"container supervisor sent {len(fds)} fds for {request.get('op')!r}, not 1")
    return reply, fds[0]


def _call(socket_path: str, request: dict[str, Any], timeout: float) -> tuple[dict[str, Any], list[int]]:
    from virtkit.core.errors import DaemonUnavailable, from_dict

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    fds: list[int] = []
    try:
        try:
            s.connect(socket_path)
        except OSError as exc:
            raise DaemonUnavailable(f"container supervisor not reachable at {socket_path}: {exc.strerror}") from exc
        s.sendall(json.dumps(request).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk, got, _flags, _addr = socket.recv_fds(s, 65536, 4)
            fds += got
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise DaemonUnavailable("container supervisor closed the connection without answering")
    reply = json.loads(buf)
    if not reply.get("ok"):
        for fd in fds:
            os.close(fd)
        raise from_dict(reply)
    return reply, fds


def ensure_running(run_dir: str, runtime_root: str, log_path: str, timeout: float = 10.0) -> None:
    """Start the supervisor for this home unless one answers already (it outlives the caller)."""
    import fcntl
    import subprocess

    sock = os.path.join(run_dir, "supervisor.sock")
    try:
        call(sock, {"op": "ping"}, timeout=2)
        return
    except Exception:
        pass
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    with open(os.path.join(run_dir, "supervisor.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            call(sock, {"op": "ping"}, timeout=2)
            return
        except Exception:
            pass
        with open(log_path, "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "virtkit.container.supervisor", run_dir, runtime_root],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                call(sock, {"op": "ping"}, timeout=2)
                return
            except Exception:
                time.sleep(0.02)
    from virtkit.core.errors import DaemonUnavailable

    raise DaemonUnavailable(f"container supervisor did not start; see {log_path}")


def main() -> None:
    if len(sys.argv) != 3:
        print("usage: python -m virtkit.container.supervisor RUN_DIR RUNTIME_ROOT", file=sys.stderr)
        sys.exit(2)
    Supervisor(sys.argv[1], sys.argv[2]).serve()


if __name__ == "__main__":
    main()
