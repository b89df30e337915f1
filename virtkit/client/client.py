"""Client: typed calls onto virtkitd's routes, and starting a local daemon when none runs."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from virtkit.client.images import ImagesAPI
from virtkit.client.networks import NetworksAPI
from virtkit.client.snapshots import SnapshotsAPI
from virtkit.client.transport import Transport, path_of
from virtkit.client.volumes import VolumesAPI
from virtkit.core.errors import DaemonUnavailable

FRAME_OUTPUT = 1
FRAME_EXIT = 3


class ExecResult(NamedTuple):
    exit_code: int
    stdout: bytes
    stderr: bytes


def connect(home: str | None = None, autostart: bool = True) -> Client:
    """A client for the local daemon of `home` ($VIRTKIT_HOME), starting virtkitd if it is not running."""
    from virtkit.config import Home

    h = Home.from_env(home)
    client = Client(h.socket, home=h.root)
    if autostart:
        # no ping first: the first request that finds no daemon starts one and is retried
        client.t.on_unavailable = client.start_daemon
    return client


class Client(ImagesAPI, VolumesAPI, SnapshotsAPI, NetworksAPI):
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

    def shutdown(self) -> None:
        self.t.request("POST", "/v1/system/shutdown")

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
            output: Callable[[bytes], None] | None = None, **options: Any) -> dict[str, Any]:
        """Create and start; unless detached, stream the output to `output` and return the exit status."""
        if detach:
            return self.create(image, command, start=True, **options)
        body = {"image": image, "command": command or [], "attach": True, **options}
        return self._read_frames(self.t.stream("POST", "/v1/instances", body), output)

    def attach(self, name: str, output: Callable[[bytes], None] | None = None) -> dict[str, Any]:
        return self._read_frames(self.t.stream("GET", path_of("v1", "instances", name, "attach")), output)

    @staticmethod
    def _read_frames(chunks: Iterator[bytes], output: Callable[[bytes], None] | None) -> dict[str, Any]:
        buf = b""
        status: dict[str, Any] = {"exit_code": None, "reason": "stream ended"}
        for chunk in chunks:
            buf += chunk
            while len(buf) >= 5:
                kind, size = buf[0], int.from_bytes(buf[1:5], "big")
                if len(buf) < 5 + size:
                    break
                data, buf = buf[5:5 + size], buf[5 + size:]
                if kind == FRAME_OUTPUT and output:
                    output(data)
                elif kind == FRAME_EXIT:
                    status = json.loads(data)
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

    def _act(self, name: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.t.request("POST", path_of("v1", "instances", name, action), body or {})  # type: ignore[no-any-return]

    def remove(self, name: str, force: bool = False) -> None:
        self.t.request("DELETE", path_of("v1", "instances", name, query={"force": "true" if force else None}))

    def stats(self, name: str) -> dict[str, Any]:
        return self.t.request("GET", path_of("v1", "instances", name, "stats"))  # type: ignore[no-any-return]

    def logs(self, name: str, follow: bool = False) -> Iterator[bytes]:
        return self.t.stream("GET", path_of("v1", "instances", name, "logs",
                                            query={"follow": "true" if follow else None}))

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
