"""Client: typed calls onto virtkitd's routes, and starting a local daemon when none runs."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator

from virtkit.client.images import ImagesAPI
from virtkit.client.networks import NetworksAPI
from virtkit.client.sched import SchedAPI
from virtkit.client.snapshots import SnapshotsAPI
from virtkit.client.transport import Transport, path_of
from virtkit.client.volumes import VolumesAPI
from virtkit.core.errors import DaemonUnavailable

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any, NamedTuple

# the attach and logs streams: frames of 1 kind byte, 4 length bytes (big-endian), the data
FRAME_STDOUT = 1
FRAME_STDERR = 2
FRAME_EXIT = 3
STREAM_NAMES = {FRAME_STDOUT: "stdout", FRAME_STDERR: "stderr"}


if TYPE_CHECKING:
    class ExecResult(NamedTuple):
        exit_code: int
        stdout: bytes
        stderr: bytes
else:   # the same tuple, without importing typing at run time
    from collections import namedtuple

    ExecResult = namedtuple("ExecResult", ["exit_code", "stdout", "stderr"])


def connect(home: str | None = None, autostart: bool = True) -> Client:
    """A client for the local daemon of `home` ($VIRTKIT_HOME), starting virtkitd if it is not running."""
    from virtkit.config import Home

    h = Home.from_env(home)
    client = Client(h.socket, home=h.root)
    if autostart:
        # no ping first: the first request that finds no daemon starts one and is retried
        client.t.on_unavailable = client.start_daemon
    return client


class Client(ImagesAPI, VolumesAPI, SnapshotsAPI, NetworksAPI, SchedAPI):
    def __init__(self, socket_path: str, home: str | None = None, timeout: float | None = 600.0) -> None:
        self.socket_path = socket_path
        self.home = home
        self.t = Transport(socket_path, timeout)

    # -- daemon ---------------------------------------------------------------------------------------
    def ping(self) -> bool:
        try:
            Transport(self.socket_path, timeout=5).request("GET", "/v1/info")
            return True
        except DaemonUnavailable:
            return False

    def ensure_daemon(self, timeout: float = 60.0) -> None:
        if not (os.path.exists(self.socket_path) and self.ping()):
            self.start_daemon(timeout)

    def start_daemon(self, timeout: float = 60.0) -> None:
        """Start virtkitd for this client's home and wait until it answers."""
        import subprocess

        if self.home is None:
            raise DaemonUnavailable(f"virtkitd not reachable at {self.socket_path}")
        os.makedirs(self.home, mode=0o700, exist_ok=True)
        log = open(os.path.join(self.home, "virtkitd.log"), "ab")
        subprocess.Popen([sys.executable, "-m", "virtkit.api.daemon", "--home", self.home],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if os.path.exists(self.socket_path) and self.ping():
                return
            time.sleep(0.05)
        raise DaemonUnavailable(f"virtkitd did not start within {timeout:g}s; see {self.home}/virtkitd.log")

    def info(self) -> dict[str, Any]:
        return self.t.request("GET", "/v1/info")  # type: ignore[no-any-return]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop virtkitd (its instances keep running). Returns once it has exited, so that the next call starts
        a new one rather than reaching the one still stopping (which would refuse it, or drop it unanswered)."""
        from virtkit.core.errors import SystemFailure

        pid = (self.t.request("POST", "/v1/system/shutdown") or {}).get("pid")
        deadline = time.monotonic() + timeout
        while pid and _alive(int(pid)):
            if time.monotonic() > deadline:
                raise SystemFailure(f"virtkitd (pid {pid}) did not stop within {timeout:g}s")
            time.sleep(0.01)

    def ksm(self, enabled: bool | None = None) -> dict[str, Any]:
        """KSM for the whole host: its status, after turning it on or off when `enabled` is given."""
        if enabled is None:
            return self.t.request("GET", "/v1/system/ksm")  # type: ignore[no-any-return]
        return self.t.request("PUT", "/v1/system/ksm", {"enabled": enabled})  # type: ignore[no-any-return]

    # -- instances ------------------------------------------------------------------------------------
    def instances(self) -> list[dict[str, Any]]:
        return self.t.request("GET", "/v1/instances")  # type: ignore[no-any-return]

    def instance(self, name: str) -> dict[str, Any]:
        return self.t.request("GET", path_of("v1", "instances", name))  # type: ignore[no-any-return]

    def create(self, image: str, command: list[str] | None = None, *, start: bool = False,
               **options: Any) -> dict[str, Any]:
        body = {"image": image, "command": command or [], "start": start, **options}
        return self.t.request("POST", "/v1/instances", body)  # type: ignore[no-any-return]

    def run(self, image: str, command: list[str] | None = None, *, detach: bool = False,
            output: Callable[[bytes], None] | None = None, error_output: Callable[[bytes], None] | None = None,
            stdin: Iterator[bytes] | None = None, on_session: Callable[[Any], None] | None = None,
            **options: Any) -> dict[str, Any]:
        """Create and start; unless detached, stream its stdout to `output` and its stderr to `error_output`
        (to `output` too when not given), and return the exit status.

        With interactive=True, `stdin`'s chunks go to the instance's stdin, which ends when they do; with tty=True
        (and console_size=[rows, cols]) it runs on a terminal, whose output comes as stdout; `on_session` gets
        the session (to send {"resize": [rows, cols]})."""
        if detach:
            return self.create(image, command, start=True, **options)
        if options.get("interactive") or options.get("tty"):
            inst = self.create(image, command, start=False, **options)
            from virtkit.client.attach import attach_session

            return attach_session(self.socket_path, inst["id"], start=True,
                                  stdin=stdin if options.get("interactive") else None, on_stdout=output,
                                  on_stderr=error_output or output, on_session=on_session)
        body = {"image": image, "command": command or [], "attach": True, **options}
        return self._read_frames(self.t.stream("POST", "/v1/instances", body), output, error_output)

    def attach(self, name: str, output: Callable[[bytes], None] | None = None,
               error_output: Callable[[bytes], None] | None = None, *, stdin: Iterator[bytes] | None = None,
               logs: bool = True, on_session: Callable[[Any], None] | None = None) -> dict[str, Any]:
        """Follow a running instance's output (from the start of its log, or with logs=False only what comes next)
        until it stops, feeding `stdin` to its stdin if given (-i/-t instances); returns its exit status."""
        if stdin is None and logs:
            return self._read_frames(self.t.stream("GET", path_of("v1", "instances", name, "attach")), output,
                                     error_output)
        from virtkit.client.attach import attach_session

        return attach_session(self.socket_path, name, start=False, stdin=stdin, on_stdout=output,
                              on_stderr=error_output or output, on_session=on_session, logs=logs)

    def console(self, name: str, output: Callable[[bytes], None] | None = None, *,
                stdin: Iterator[bytes] | None = None, logs: bool = False,
                on_session: Callable[[Any], None] | None = None,
                detached: Callable[[], bool] | None = None) -> dict[str, Any]:
        """A VM's serial console: its output raw as it comes (only what comes next, or with logs=True the whole
        log), `stdin`'s chunks to the console's input; until the VM stops or the caller leaves (closing the session
        `on_session` gave it, once `detached()` is true). Returns the exit status, or reason "detached"."""
        from virtkit.client.attach import attach_session

        return attach_session(self.socket_path, name, start=False, stdin=stdin, on_stdout=output, on_stderr=output,
                              on_session=on_session, logs=logs, console=True, detached=detached)

    @staticmethod
    def _read_frames(chunks: Iterator[bytes], output: Callable[[bytes], None] | None,
                     error_output: Callable[[bytes], None] | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"exit_code": None, "reason": "stream ended"}
        try:
            for kind, data in _frames(chunks):
                if kind == FRAME_STDOUT and output:
                    output(data)
                elif kind == FRAME_STDERR and (sink := error_output or output):
                    sink(data)
                elif kind == FRAME_EXIT:
                    # the last frame, sent once all is done (an auto-remove instance is gone by then): the end of
                    # the stream, one more step of the daemon's away, is not waited for
                    return dict(json.loads(data))
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()             # the connection goes now, not when the generator is collected
        return status

    def start(self, name: str) -> dict[str, Any]:
        return self._act(name, "start")

    def stop(self, name: str, timeout: float = 10) -> dict[str, Any]:
        return self._act(name, "stop", {"timeout": timeout})

    def restart(self, name: str, timeout: float = 10) -> dict[str, Any]:
        return self._act(name, "restart", {"timeout": timeout})

    def kill(self, name: str, signal: str | int = "KILL") -> dict[str, Any]:
        return self._act(name, "kill", {"signal": signal})

    def pause(self, name: str) -> dict[str, Any]:
        return self._act(name, "pause")

    def resume(self, name: str) -> dict[str, Any]:
        return self._act(name, "resume")

    def update(self, name: str, *, cpu_weight: int | None = None, cpus: float | None = None,
               cpuset_cpus: str | None = None) -> dict[str, Any]:
        """Change CPU weight, cap (cpus=0: none) or pinning (cpuset_cpus="": none), live when it runs."""
        changes = {"cpu_weight": cpu_weight, "cpus": cpus, "cpuset_cpus": cpuset_cpus}
        return self._act(name, "update", {k: v for k, v in changes.items() if v is not None})

    def rename(self, name: str, new_name: str) -> dict[str, Any]:
        """Rename an instance (running or not); names inside its networks follow."""
        return self._act(name, "rename", {"name": new_name})

    def _act(self, name: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.t.request("POST", path_of("v1", "instances", name, action), body or {})  # type: ignore[no-any-return]

    def remove(self, name: str, force: bool = False) -> None:
        self.t.request("DELETE", path_of("v1", "instances", name, query={"force": "true" if force else None}))

    def stats(self, name: str) -> dict[str, Any]:
        return self.t.request("GET", path_of("v1", "instances", name, "stats"))  # type: ignore[no-any-return]

    def logs(self, name: str, follow: bool = False, tail: int | None = None, stdout: bool = True,
             stderr: bool = True) -> Iterator[bytes]:
        """The instance's output, stdout and stderr together in the order they came (see log_stream)."""
        for _stream, data in self.log_stream(name, follow=follow, tail=tail, stdout=stdout, stderr=stderr):
            yield data

    def log_stream(self, name: str, follow: bool = False, tail: int | None = None, stdout: bool = True,
                   stderr: bool = True) -> Iterator[tuple[str, bytes]]:
        """("stdout" | "stderr", data) pieces of the instance's output in order; from its last `tail` lines if
        given; with `follow`, until the instance stops."""
        query = {"follow": "true" if follow else None, "tail": tail,
                 "stdout": None if stdout else "false", "stderr": None if stderr else "false"}
        chunks = self.t.stream("GET", path_of("v1", "instances", name, "logs", query=query))
        for kind, data in _frames(chunks):
            if kind in STREAM_NAMES:
                yield STREAM_NAMES[kind], data

    # -- exec -----------------------------------------------------------------------------------------
    def exec(self, name: str, command: list[str], env: list[str] | None = None) -> ExecResult:
        """Run a command in a running instance and collect its output."""
        out: list[bytes] = []
        err: list[bytes] = []
        code = self.exec_stream(name, command, env=env, on_stdout=out.append, on_stderr=err.append)
        return ExecResult(code, b"".join(out), b"".join(err))

    def exec_stream(self, name: str, command: list[str], *, env: list[str] | None = None, tty: bool = False,
                    stdin: Iterator[bytes] | None = None, size: tuple[int, int] | None = None,
                    on_stdout: Callable[[bytes], None] | None = None,
                    on_stderr: Callable[[bytes], None] | None = None,
                    on_session: Callable[[Any], None] | None = None) -> int:
        from virtkit.client.exec import exec_session

        return exec_session(self.socket_path, name, command, env=env or [], tty=tty, stdin=stdin, size=size,
                            on_stdout=on_stdout, on_stderr=on_stderr, on_session=on_session)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie does not: the daemon this process started is its child)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _frames(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """(kind, data) of each frame in a stream of chunks cut anywhere."""
    buf = bytearray()
    for chunk in chunks:
        buf += chunk
        start = 0
        while len(buf) - start >= 5:
            kind, size = buf[start], int.from_bytes(buf[start + 1:start + 5], "big")
            if len(buf) - start < 5 + size:
                break
            yield kind, bytes(buf[start + 5:start + 5 + size])
            start += 5 + size
        del buf[:start]
