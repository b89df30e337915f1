"""exec through the guest agent and the serial console's input, in one real busybox VM (TCG here) shared by the
module's tests."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from virtkit.config import Home
from virtkit.core.errors import InvalidState, Unsupported
from virtkit.core.models import Instance
from virtkit.vm.qemu import qmp
from virtkit.vm.qemu.agent import AgentUnavailable, GuestAgent
from virtkit.vm.qemu.driver import QemuDriver

from .conftest import needs_qemu

pytestmark = needs_qemu


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[QemuDriver, Instance]]:
    home = Home(str(tmp_path_factory.mktemp("vkhome")))
    home.ensure()
    drv = QemuDriver(home, None)
    # sh on the console: what the console test types into
    inst = Instance(id=os.urandom(16).hex(), name="access", type="vm", state="created", image="busybox",
                    spec={"command": ["sh"]})
    drv.create(inst)
    try:
        drv.start(inst)
        yield drv, inst
    finally:
        drv.delete(inst)
    assert not os.path.exists(drv.agent_socket(inst))


def _exec(drv: QemuDriver, inst: Instance, command: list[str], stdin: bytes | None = None,
          env: list[str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """As virtkitd's exec session runs it: the helper exec_argv names, our pipes on it."""
    argv = drv.exec_argv(inst, command, tty=False, env=env or [])
    return subprocess.run(argv, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, timeout=120)


def test_exec_returns_output_and_exit_code(vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = vm
    r = _exec(drv, inst, ["sh", "-c", "uname -r; echo oops >&2; exit 3"])      # waits for the agent at boot
    assert (r.returncode, r.stderr) == (3, b"oops\n")
    assert r.stdout.decode().strip() == drv.info(inst)["release"]             # the guest's kernel, not ours
    r = _exec(drv, inst, ["cat"], stdin=b"line one\nline two\n", env=["X=1"])
    assert (r.returncode, r.stdout) == (0, b"line one\nline two\n")
    r = _exec(drv, inst, ["no-such-command"])
    assert r.returncode == 127 and b"executable file not found" in r.stderr


def test_exec_with_a_terminal_is_refused_clearly(vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = vm
    with pytest.raises(Unsupported, match="virtkit console"):
        drv.exec_argv(inst, ["sh"], tty=True, env=[])


def test_an_agent_that_does_not_answer_is_a_clear_error(vm: tuple[QemuDriver, Instance]) -> None:
    """A paused guest answers nothing: the client gives up at its timeout and says why, then works again."""
    drv, inst = vm
    agent = GuestAgent(drv.agent_socket(inst), name=inst.name, timeout=1.0)
    agent.ping()
    qmp.stop(drv.qmp_socket(inst))
    try:
        t0 = time.monotonic()
        with pytest.raises(AgentUnavailable, match=r"VM 'access': the guest agent did not answer within 1 s"):
            agent.ping()
        assert time.monotonic() - t0 < 10
    finally:
        qmp.cont(drv.qmp_socket(inst))
    GuestAgent(drv.agent_socket(inst), timeout=30).ping()


def test_console_input_reaches_the_guest_and_its_output_the_log(vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = vm
    for round_ in (1, 2):           # a second session after the first closed: the input works again
        fd = drv.open_console(inst)
        try:
            os.write(fd, f"echo console-$((6*7))-{round_}\n".encode())
        finally:
            os.close(fd)
        deadline = time.monotonic() + 60
        while f"console-42-{round_}".encode() not in drv.console_output(inst):
            assert time.monotonic() < deadline, drv.console_output(inst)[-2000:]
            time.sleep(0.05)


def test_exec_and_console_of_a_stopped_vm_are_clear_errors(vm: tuple[QemuDriver, Instance]) -> None:
    drv, inst = vm
    drv.stop(inst, 10)
    with pytest.raises(InvalidState, match="not running"):
        drv.open_console(inst)
    with pytest.raises(InvalidState, match="not running"):
        drv.exec_argv(inst, ["true"], tty=False, env=[])
