"""The host side of a VM's guest agent: the qemu-guest-agent protocol over the VM's virtio-serial chardev socket.

One client for both agents virtkit meets: its own vkagent (minimal VMs, see vm/qemu/vkagent/) and Debian's
qemu-guest-agent (distribution images). vkagent's extensions (output streamed while a command runs, stdin fed
as it comes) are used only when guest-info names vkagent.

Each call is one transaction on a fresh connection: connect, 0xFF + guest-sync-delimited (which discards whatever
an earlier client left half-sent or unread; see _sync), the command, its reply, close. Why not one connection per exec:
QEMU's chardev serves one client at a time, so a long exec holding it would stall every other exec and status
poll of the VM until it ended.

Imports only the standard library and virtkit's errors: `virtkit exec` starts a helper process per exec.
"""

from __future__ import annotations

import base64
import json
import queue
import random
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from virtkit.core.errors import SystemFailure

TIMEOUT = 5.0                      # one transaction, once the agent is known to be up
DEFAULT_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root")
POLL_MIN = 0.002                   # exec-status polling: from this, doubling while nothing happens, up to POLL_MAX
POLL_MAX = 0.1
INPUT_HIGH_WATER = 4 << 20         # vkagent stdin bytes not yet written: hold back above this
FILE_CHUNK = 1 << 20
SYNC_RESEND = 0.15                 # a sync unanswered this long goes again (doubling, up to SYNC_RESEND_MAX)
SYNC_RESEND_MAX = 2.0


class AgentUnavailable(SystemFailure):
    """The agent does not answer: not started yet, not installed in the guest, or the VM is not running."""


class AgentCommandError(SystemFailure):
    """The agent answered with an error (qemu-ga's {"error": {"class", "desc"}})."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"guest agent: {command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


ExecOutput = Callable[[bytes], None]


class GuestAgent:
    def __init__(self, socket_path: str, *, name: str = "the VM", timeout: float = TIMEOUT) -> None:
        self.socket_path = socket_path
        self.name = name
        self.timeout = timeout
        self._streams: bool | None = None

    # -- one transaction --------------------------------------------------------------------------------------
    def _unavailable(self, timeout: float, why: str = "") -> AgentUnavailable:
        return AgentUnavailable(
            f"VM '{self.name}': the guest agent did not answer within {timeout:g} s{why} (a minimal VM starts "
            "virtkit's agent at boot; a distribution image needs qemu-guest-agent installed and running)")

    def _connect(self, timeout: float) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.socket_path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            raise AgentUnavailable(f"VM '{self.name}' has no guest agent channel at {self.socket_path} (is it "
                                   f"running? VMs made before the agent existed have none): {exc.strerror}") from exc
        except OSError as exc:
            s.close()
            raise AgentUnavailable(f"VM '{self.name}': cannot reach the guest agent: {exc}") from exc
        return s

    @staticmethod
    def _read_reply(s: socket.socket, buf: bytearray, deadline: float, after_ff: bool = False) -> dict[str, Any]:
        """The next JSON reply (each ends with a newline); with after_ff, only what follows the last 0xFF."""
        while True:
            if after_ff:
                ff = buf.rfind(b"\xff")
                if ff >= 0:
                    del buf[:ff + 1]
                    after_ff = False
            if not after_ff:
                while (nl := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:nl]).strip()
                    del buf[:nl + 1]
                    if line:
                        try:
                            msg = json.loads(line)
                        except ValueError:
                            continue            # the tail of something stale
                        if isinstance(msg, dict):
                            return msg
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            s.settimeout(left)
            chunk = s.recv(1 << 20)
            if not chunk:
                raise ConnectionResetError("the agent channel closed")
            buf += chunk

    def _sync(self, s: socket.socket, buf: bytearray, deadline: float) -> None:
        """0xFF + guest-sync-delimited until its answer comes, resent on the same connection with backoff.

        Resent because the first message after a connect is now and then lost (about 1 in 100 here, QEMU 7.2:
        the chardev reads it, the guest never gets it); a resend on the same connection gets through. A sync is
        safe to repeat, and also covers an agent that starts only later (a VM still booting)."""
        sync_id = random.randrange(1, 1 << 31)
        wait = SYNC_RESEND
        while True:
            s.sendall(b"\xff" + json.dumps({"execute": "guest-sync-delimited", "arguments": {"id": sync_id}})
                      .encode() + b"\n")
            try:
                while True:
                    msg = self._read_reply(s, buf, min(deadline, time.monotonic() + wait), after_ff=True)
                    if msg.get("return") == sync_id:
                        return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
            wait = min(wait * 2, SYNC_RESEND_MAX)

    def command(self, command: str, args: dict[str, Any] | None = None, *, timeout: float | None = None,
                reply: bool = True) -> Any:
        """Run one agent command (after a sync) and return its "return" value.

        The command goes once (guest-exec must not run twice); its answer is the one carrying its "id" (both
        agents echo it), so a late answer to a repeated sync is not taken for it."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        s = self._connect(timeout)
        try:
            buf = bytearray()
            self._sync(s, buf, deadline)
            cmd_id = f"vk{random.randrange(1 << 48):x}"
            req: dict[str, Any] = {"execute": command, "id": cmd_id}
            if args:
                req["arguments"] = args
            s.sendall(json.dumps(req).encode() + b"\n")
            if not reply:
                return None
            while (msg := self._read_reply(s, buf, deadline)).get("id") != cmd_id:
                continue
        except TimeoutError as exc:
            raise self._unavailable(timeout) from exc
        except OSError as exc:
            raise self._unavailable(timeout, f" ({exc})") from exc
        finally:
            s.close()
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            raise AgentCommandError(command, str(err.get("class", "GenericError")), str(err.get("desc", msg)))
        return msg.get("return")

    # -- commands ---------------------------------------------------------------------------------------------
    def wait_ready(self, timeout: float) -> None:
        """Until the agent answers a sync (a VM that is still booting starts it only late), at most `timeout`."""
        self.command("guest-ping", timeout=timeout)

    def ping(self) -> None:
        self.command("guest-ping")

    def info(self) -> dict[str, Any]:
        return dict(self.command("guest-info") or {})

    def is_vkagent(self) -> bool:
        if self._streams is None:
            self._streams = str(self.info().get("version", "")).startswith("vkagent")
        return self._streams

    def exec(self, argv: list[str], *, env: list[str] | None = None, input_data: bytes | None = None,
             capture: bool = True, stream: bool = False, keep_stdin: bool = False) -> int:
        """guest-exec: the guest pid. env replaces the guest process's environment (qemu-ga's meaning)."""
        args: dict[str, Any] = {"path": argv[0], "arg": list(argv[1:]), "capture-output": capture}
        if env:
            args["env"] = list(env)
        if input_data is not None:
            args["input-data"] = base64.b64encode(input_data).decode()
        if stream:
            args["x-virtkit-stream"] = True
        if keep_stdin:
            args["x-virtkit-stdin"] = True
        return int(self.command("guest-exec", args)["pid"])

    def exec_status(self, pid: int) -> dict[str, Any]:
        return dict(self.command("guest-exec-status", {"pid": pid}))

    def exec_input(self, pid: int, data: bytes = b"", eof: bool = False) -> int:
        """vkagent only: more stdin for `pid`; returns how many bytes it has still to write."""
        args: dict[str, Any] = {"pid": pid, "eof": eof}
        if data:
            args["input-data"] = base64.b64encode(data).decode()
        return int(self.command("x-virtkit-exec-input", args).get("pending", 0))

    def read_file(self, path: str) -> bytes:
        handle = self.command("guest-file-open", {"path": path, "mode": "r"})
        out = bytearray()
        try:
            while True:
                r = self.command("guest-file-read", {"handle": handle, "count": FILE_CHUNK})
                out += base64.b64decode(r.get("buf-b64", ""))
                if r.get("eof") or not r.get("count"):
                    return bytes(out)
        finally:
            self.command("guest-file-close", {"handle": handle})

    def write_file(self, path: str, data: bytes) -> None:
        handle = self.command("guest-file-open", {"path": path, "mode": "w"})
        try:
            for i in range(0, len(data), FILE_CHUNK):
                self.command("guest-file-write", {"handle": handle,
                                                  "buf-b64": base64.b64encode(data[i:i + FILE_CHUNK]).decode()})
        finally:
            self.command("guest-file-close", {"handle": handle})

    def shutdown(self, mode: str = "powerdown") -> None:
        """guest-shutdown: the agent sends no reply when it works."""
        self.command("guest-shutdown", {"mode": mode}, reply=False)

    # -- a whole exec -----------------------------------------------------------------------------------------
    def run(self, argv: list[str], *, env: list[str] | None = None, stdin: Iterator[bytes] | bytes | None = None,
            on_stdout: ExecOutput | None = None, on_stderr: ExecOutput | None = None) -> int:
        """Run argv in the guest until it ends: output to the callbacks, stdin from `stdin`; its exit code
        (128 + N when signal N ended it). Streams with vkagent; with qemu-ga, stdin is read to its end first
        and the output comes when the command has ended (what that agent can do)."""
        stream = self.is_vkagent()
        full_env = merge_env(env) if env else None
        chunks: queue.Queue[bytes | None] | None = None
        if stream and stdin is not None and not isinstance(stdin, bytes):
            chunks = _pump(stdin)
            pid = self.exec(argv, env=full_env, stream=True, keep_stdin=True)
        else:
            data = stdin if isinstance(stdin, bytes) or stdin is None else b"".join(stdin)
            pid = self.exec(argv, env=full_env, input_data=data or None, stream=stream)
        delay = POLL_MIN
        stdin_open = chunks is not None
        while True:
            st = self.exec_status(pid)
            busy = False
            for key, sink in (("out-data", on_stdout), ("err-data", on_stderr)):
                if st.get(key):
                    busy = True
                    if sink:
                        sink(base64.b64decode(st[key]))
            if st.get("exited"):
                if "signal" in st:
                    return 128 + int(st["signal"])
                return int(st.get("exitcode", 0))
            if stdin_open and chunks is not None:
                try:
                    chunk = chunks.get(timeout=delay)
                except queue.Empty:
                    chunk = b""
                if chunk is None:
                    stdin_open = False
                    self.exec_input(pid, eof=True)
                elif chunk:
                    busy = True
                    while self.exec_input(pid, chunk) > INPUT_HIGH_WATER:
                        time.sleep(POLL_MAX)
                        chunk = b""
            else:
                time.sleep(delay)
            delay = POLL_MIN if busy else min(delay * 2, POLL_MAX)


def merge_env(env: list[str]) -> list[str]:
    """DEFAULT_ENV with the user's NAME=VALUE on top (a given env replaces the guest process's whole one)."""
    merged = {e.split("=", 1)[0]: e for e in DEFAULT_ENV}
    for e in env:
        merged[e.split("=", 1)[0]] = e
    return list(merged.values())


def _pump(stdin: Iterator[bytes]) -> queue.Queue[bytes | None]:
    """stdin's chunks on a queue (None at its end), read by a thread: reading must not stall the status polls."""
    import threading

    q: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        try:
            for chunk in stdin:
                if chunk:
                    q.put(chunk)
        finally:
            q.put(None)

    threading.Thread(target=read, daemon=True).start()
    return q


def exit_code_of_exec_error(err: AgentCommandError) -> int | None:
    """Docker's codes for a command that cannot run: 127 not found, 126 not executable; None: another error."""
    if err.command != "guest-exec":
        return None
    if "No such file or directory" in err.desc or "not found" in err.desc:
        return 127
    if "Permission denied" in err.desc or "Exec format error" in err.desc or "Is a directory" in err.desc:
        return 126
    return None

