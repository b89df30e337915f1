"""The guest agent without a VM: vkagent compiled here and run on the host behind a stand-in for QEMU's chardev,
driven by the host client (vm/qemu/agent.py) and the exec helper, as `virtkit exec` drives them in a VM."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from virtkit.vm.qemu import vkagent
from virtkit.vm.qemu.agent import AgentCommandError, AgentUnavailable, GuestAgent, exit_code_of_exec_error

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc and libc6-dev (scripts/setup.sh)")


@pytest.fixture(scope="module")
def agent_bin(tmp_path_factory: pytest.TempPathFactory) -> str:
    return vkagent.build(str(tmp_path_factory.mktemp("vmcache")))


class FakeChardev:
    """QEMU's side of the agent's port: a unix socket server taking one client at a time, whose bytes go to one
    long-lived vkagent (--stdio) and whose replies go back to the client connected then, else nowhere."""

    def __init__(self, agent_bin: str, path: str) -> None:
        self.proc = subprocess.Popen([agent_bin, "--stdio"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.path = path
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(8)
        self.client: socket.socket | None = None
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()
        threading.Thread(target=self._replies, daemon=True).start()

    def _serve(self) -> None:
        assert self.proc.stdin is not None
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            with self.lock:
                self.client = conn
            while data := conn.recv(65536):
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            with self.lock:
                self.client = None
            conn.close()

    def _replies(self) -> None:
        assert self.proc.stdout is not None
        while data := os.read(self.proc.stdout.fileno(), 65536):
            with self.lock:
                if self.client is not None:
                    try:
                        self.client.sendall(data)
                    except OSError:
                        pass

    def close(self) -> None:
        self.srv.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture
def chardev(agent_bin: str, tmp_path: object) -> Iterator[FakeChardev]:
    c = FakeChardev(agent_bin, os.path.join(str(tmp_path), "qga.sock"))
    yield c
    c.close()


def _raw(agent_bin: str, *requests: str) -> list[bytes]:
    data = b"\n".join(r.encode("latin-1") for r in requests) + b"\n"     # latin-1: "\xff" is the byte 0xFF
    out = subprocess.run([agent_bin, "--stdio"], input=data, capture_output=True, timeout=30).stdout
    return out.splitlines()


def test_protocol_sync_info_errors_and_ids(agent_bin: str) -> None:
    lines = _raw(agent_bin, '{"execute": "guest-sync", "arguments": {"id": 12345}}',
                 '\xff{"execute": "guest-sync-delimited", "arguments": {"id": 7}}',
                 '{"execute": "guest-info", "id": "abc"}', '{"execute": "no-such-command"}', "not json",
                 '{"execute": "guest-ping", "id": 5}')
    assert json.loads(lines[0]) == {"return": 12345}
    assert lines[1] == b'\xff{"return": 7}'                   # the delimiter the host resynchronizes on
    info = json.loads(lines[2])
    assert info["id"] == "abc" and info["return"]["version"].startswith("vkagent")
    names = {c["name"] for c in info["return"]["supported_commands"]}
    assert {"guest-exec", "guest-exec-status", "guest-file-open", "guest-shutdown"} <= names
    assert json.loads(lines[3])["error"]["class"] == "CommandNotFound"
    assert "error" in json.loads(lines[4])
    assert json.loads(lines[5]) == {"return": {}, "id": 5}


def test_exec_returns_output_exit_code_and_takes_stdin(chardev: FakeChardev) -> None:
    agent = GuestAgent(chardev.path)
    out: list[bytes] = []
    err: list[bytes] = []
    code = agent.run(["sh", "-c", "cat; echo to-stderr >&2; exit 3"], stdin=b"from stdin\n", on_stdout=out.append,
                     on_stderr=err.append)
    assert (code, b"".join(out), b"".join(err)) == (3, b"from stdin\n", b"to-stderr\n")
    assert agent.run(["sh", "-c", "kill -TERM $$"]) == 128 + 15


def test_exec_streams_output_and_stdin_while_it_runs(chardev: FakeChardev) -> None:
    agent = GuestAgent(chardev.path)
    assert agent.is_vkagent()
    seen_first = threading.Event()
    out: list[bytes] = []

    def on_stdout(data: bytes) -> None:
        out.append(data)
        if b"first" in b"".join(out):
            seen_first.set()

    def stdin() -> Iterator[bytes]:
        # only once the first line has come out: the command must be running, its output streamed
        assert seen_first.wait(20), out
        yield b"typed\n"

    code = agent.run(["sh", "-c", "echo first; read x; echo got-$x"], stdin=stdin(), on_stdout=on_stdout)
    assert code == 0 and b"".join(out) == b"first\ngot-typed\n"


def test_exec_like_qemu_guest_agent_without_the_extensions(chardev: FakeChardev) -> None:
    """The path taken with Debian's qemu-guest-agent: stdin read to its end first, output when it has ended."""
    agent = GuestAgent(chardev.path)
    agent._streams = False
    out: list[bytes] = []
    code = agent.run(["sh", "-c", "tr a-z A-Z; exit 4"], stdin=iter([b"abc", b"def\n"]), on_stdout=out.append)
    assert (code, b"".join(out)) == (4, b"ABCDEF\n")


def test_a_command_that_cannot_run_is_127_or_126(chardev: FakeChardev, tmp_path: object) -> None:
    agent = GuestAgent(chardev.path)
    with pytest.raises(AgentCommandError) as missing:
        agent.run(["no-such-command-here"])
    assert exit_code_of_exec_error(missing.value) == 127 and "No such file" in missing.value.desc
    not_executable = os.path.join(str(tmp_path), "plain")
    with open(not_executable, "w") as f:
        f.write("data\n")
    with pytest.raises(AgentCommandError) as denied:
        agent.run([not_executable])
    assert exit_code_of_exec_error(denied.value) == 126


def test_env_is_the_defaults_and_the_given(chardev: FakeChardev) -> None:
    out: list[bytes] = []
    GuestAgent(chardev.path).run(["sh", "-c", "echo $FOO:$HOME:$PATH"], env=["FOO=bar", "HOME=/tmp"],
                                 on_stdout=out.append)
    assert b"".join(out) == b"bar:/tmp:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"


def test_files_round_trip(chardev: FakeChardev, tmp_path: object) -> None:
    agent = GuestAgent(chardev.path)
    path = os.path.join(str(tmp_path), "f.bin")
    data = os.urandom(3 << 20)                      # more than one 1 MiB chunk each way
    agent.write_file(path, data)
    with open(path, "rb") as f:
        assert f.read() == data
    assert agent.read_file(path) == data
    with pytest.raises(AgentCommandError, match="No such file"):
        agent.read_file(path + ".missing")


def test_an_agent_that_does_not_answer_is_a_clear_error(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "mute.sock")
    with pytest.raises(AgentUnavailable, match="no guest agent channel"):
        GuestAgent(path, name="vm1").ping()
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(path)
    mute.listen(1)                                  # accepts (the kernel does), never answers: a guest without one
    try:
        with pytest.raises(AgentUnavailable, match=r"VM 'vm1': the guest agent did not answer within 0.5 s"):
            GuestAgent(path, name="vm1", timeout=0.5).ping()
    finally:
        mute.close()


def test_exec_helper_relays_and_exits_with_the_code(chardev: FakeChardev) -> None:
    """What virtkitd runs for `virtkit exec` into a VM."""
    helper = [sys.executable, "-m", "virtkit.vm.qemu.agent_exec", "--name", "vm1", "--env=X=1", chardev.path, "--"]
    r = subprocess.run([*helper, "sh", "-c", "cat; echo $X >&2; exit 5"], input=b"in\n", capture_output=True,
                       timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (5, b"in\n", b"1\n")
    r = subprocess.run([*helper, "no-such-command-here"], stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert r.returncode == 127 and b"executable file not found" in r.stderr


def test_input_data_and_exec_status_by_hand(agent_bin: str) -> None:
    """guest-exec-status before the end says exited false; an unknown pid is an error, not a crash."""
    lines = _raw(agent_bin, json.dumps({"execute": "guest-exec", "arguments": {
        "path": "sh", "arg": ["-c", "read x; echo $x"], "input-data": base64.b64encode(b"hi\n").decode(),
        "capture-output": True}}), '{"execute": "guest-exec-status", "arguments": {"pid": 1}}')
    assert "pid" in json.loads(lines[0])["return"]
    assert "Invalid parameter 'pid'" in json.loads(lines[1])["error"]["desc"]
