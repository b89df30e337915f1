"""`virtkit exec` and `virtkit console` into a VM through the CLI: one busybox VM shared by the module's tests."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import VENV_BIN, vk

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def vm(vk_home: str, client: object) -> Iterator[str]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup.sh installs qemu-system-x86)")
    name = f"t-{uuid.uuid4().hex[:8]}"
    # sh reads the serial console: what the console test types into
    r = vk(vk_home, "run", "--vm", "-d", "--name", name, "busybox", "--", "sh", timeout=120)
    assert r.returncode == 0, r.stderr
    yield name
    vk(vk_home, "rm", "-f", name)


def test_exec_returns_output_stderr_and_exit_code(vk_home: str, vm: str) -> None:
    r = vk(vk_home, "exec", vm, "--", "sh", "-c", "uname -r; echo to-stderr >&2; exit 7", timeout=120)
    assert r.returncode == 7, r.stderr
    assert r.stdout.decode().strip().endswith("-cloud-amd64")          # the guest's kernel
    assert r.stderr == b"to-stderr\n"
    r = vk(vk_home, "exec", "-e", "GREETING=hello", vm, "--", "sh", "-c", "echo $GREETING")
    assert (r.returncode, r.stdout) == (0, b"hello\n")


def test_exec_feeds_stdin_with_i(vk_home: str, vm: str) -> None:
    r = vk(vk_home, "exec", "-i", vm, "--", "sh", "-c", "tr a-z A-Z; exit 2", input=b"piped in\n")
    assert (r.returncode, r.stdout) == (2, b"PIPED IN\n"), r.stderr


def test_exec_of_a_missing_command_is_127(vk_home: str, vm: str) -> None:
    r = vk(vk_home, "exec", vm, "--", "no-such-command")
    assert r.returncode == 127
    assert b"no-such-command" in r.stderr and b"not found" in r.stderr and b"Traceback" not in r.stderr


def test_exec_with_a_terminal_says_to_use_the_console(vk_home: str, vm: str) -> None:
    r = vk(vk_home, "exec", "-t", vm, "--", "sh")
    assert r.returncode != 0 and b"virtkit console" in r.stderr and b"Traceback" not in r.stderr


def _type_on_console(vk_home: str, vm: str, line: bytes, until: bytes) -> bytes:
    """Type `line` on the VM's console (again every 5 s until the session is up) until `until` comes back."""
    proc = subprocess.Popen([os.path.join(VENV_BIN, "virtkit"), "--home", vk_home, "console", vm],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        seen = b""
        deadline = time.monotonic() + 60
        typed_at = 0.0
        while until not in seen:
            assert time.monotonic() < deadline, seen
            if time.monotonic() - typed_at > 5:
                proc.stdin.write(line)
                proc.stdin.flush()
                typed_at = time.monotonic()
            if select.select([proc.stdout], [], [], 0.2)[0]:
                seen += os.read(proc.stdout.fileno(), 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert b"Traceback" not in err
    return seen


def test_console_streams_output_and_takes_input(vk_home: str, vm: str) -> None:
    seen = _type_on_console(vk_home, vm, b"echo console-$((6*7))\n", b"console-42")
    assert b"echo console-$((6*7))" in seen         # the guest's terminal echoes what we typed


def test_exec_says_so_when_the_agent_does_not_answer(vk_home: str, vm: str) -> None:
    """The guest's agent gone (killed from the console): exec gives up after its timeout with a clear error."""
    _type_on_console(vk_home, vm, b"kill $(pidof vkagent) && echo agent-$((1+1))-gone\n", b"agent-2-gone")
    t0 = time.monotonic()
    r = vk(vk_home, "exec", vm, "--", "true", timeout=120)
    assert r.returncode != 0 and b"the guest agent did not answer within" in r.stderr, r.stderr
    assert b"Traceback" not in r.stderr and time.monotonic() - t0 < 60


def test_exec_and_console_of_a_stopped_vm_are_clear_errors(vk_home: str, vm: str) -> None:
    assert vk(vk_home, "stop", vm, timeout=60).returncode == 0
    r = vk(vk_home, "exec", vm, "--", "true")
    assert r.returncode != 0 and b"stopped" in r.stderr and b"Traceback" not in r.stderr
    r = vk(vk_home, "console", vm, input=b"")
    assert r.returncode != 0 and b"stopped" in r.stderr and b"Traceback" not in r.stderr
