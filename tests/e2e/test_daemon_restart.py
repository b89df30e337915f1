"""virtkitd can die (kill -9) and come back: containers keep running, and exits meanwhile are recorded."""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from tests.e2e.conftest import _alive, _pid_from, vk
from virtkit.client import connect
from virtkit.config import Home

pytestmark = pytest.mark.root


def test_socket_is_private(vk_home, client):
    mode = os.stat(Home.from_env(vk_home).socket).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


def test_kill_9_daemon_keeps_containers_and_records_exits(vk_home, client, name):
    h = Home.from_env(vk_home)
    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    client.run("busybox", ["sh", "-c", "sleep 1; exit 4"], detach=True, name=name + "-short")
    pid = client.instance(name)["pid"]
    daemon = _pid_from(os.path.join(h.run_dir, "virtkitd.pid"))
    os.kill(daemon, signal.SIGKILL)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while _alive(daemon) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(daemon)
    assert _alive(pid), "the container died with the daemon"
    time.sleep(1.5)                       # the short one exits while no daemon runs

    c2 = connect(vk_home)                 # its first request starts a new virtkitd
    inst = c2.instance(name)
    assert _pid_from(os.path.join(h.run_dir, "virtkitd.pid")) != daemon
    assert inst["state"] == "running" and inst["pid"] == pid
    short = c2.instance(name + "-short")
    assert (short["state"], short["exit_code"], short["exit_reason"]) == ("stopped", 4, "exited")
    assert c2.exec(name, ["echo", "alive"]).stdout == b"alive\n"

    os.kill(pid, signal.SIGKILL)          # dies later: recorded by the new daemon too
    deadline = time.monotonic() + 5
    while c2.instance(name)["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.05)
    inst = c2.instance(name)
    assert (inst["state"], inst["exit_code"]) == ("stopped", 137)
    r = vk(vk_home, "rm", name, name + "-short")
    assert r.returncode == 0, r.stderr


def test_shutdown_returns_once_the_daemon_is_gone(vk_home, client, name):
    """`virtkit system shutdown` and at once the next command: it meets a new virtkitd, not the one stopping
    (which refused to start a second daemon on its lock, or dropped the connection unanswered)."""
    h = Home.from_env(vk_home)
    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    daemon = _pid_from(os.path.join(h.run_dir, "virtkitd.pid"))
    r = vk(vk_home, "system", "shutdown")
    assert r.returncode == 0, r.stderr
    assert not _alive(daemon)
    r = vk(vk_home, "list", "--json")                 # starts a new one
    assert r.returncode == 0 and f'"{name}"'.encode() in r.stdout, r.stderr
    assert _pid_from(os.path.join(h.run_dir, "virtkitd.pid")) != daemon
    assert connect(vk_home).instance(name)["state"] == "running"
    assert vk(vk_home, "rm", "-f", name).returncode == 0


def _wait_stopped(client, name: str, timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while client.instance(name)["state"] != "stopped" and time.monotonic() < deadline:
        time.sleep(0.1)
    return client.instance(name)


def test_kill_9_supervisor_records_supervisor_lost_and_restarts(vk_home, client, name):
    """The supervisor is what waits for containers: when it dies, nothing could record their exits. virtkitd sees
    it gone, kills what is left of its containers (as containerd after a dead shim) and says why."""
    import subprocess

    from tests.e2e.conftest import VENV_BIN

    h = Home.from_env(vk_home)
    client.run("busybox", ["sh", "-c", "echo before; sleep 600"], detach=True, name=name)
    client.run("busybox", ["sleep", "600"], detach=True, name=name + "-paused")
    client.pause(name + "-paused")
    attached = subprocess.Popen([os.path.join(VENV_BIN, "virtkit"), "--home", vk_home, "run", "--name",
                                 name + "-att", "busybox", "--", "sh", "-c", "echo up; sleep 600"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert attached.stdout is not None and attached.stdout.readline() == b"up\n"
    pids = {n: client.instance(n)["pid"] for n in (name, name + "-paused", name + "-att")}
    supervisor = _pid_from(os.path.join(h.run_dir, "supervisor.pid"))
    assert supervisor and _alive(supervisor)

    os.kill(supervisor, signal.SIGKILL)

    # `virtkit run` attached to one of them ends with its exit code, as `docker run` does when its container dies
    _out, err = attached.communicate(timeout=30)
    assert attached.returncode == 137, err
    for n, pid in pids.items():
        inst = _wait_stopped(client, n)
        assert (inst["state"], inst["exit_code"], inst["exit_reason"]) == ("stopped", 137, "supervisor lost"), n
        assert not _alive(pid), f"{n}: its process outlived the record"
    listed = vk(vk_home, "list")
    assert "stopped (137, supervisor lost)" in listed.stdout.decode()
    assert b'"exit_reason": "supervisor lost"' in vk(vk_home, "inspect", name).stdout

    # started again under a new supervisor, which records its exits as usual
    r = vk(vk_home, "start", name)
    assert r.returncode == 0, r.stderr
    assert _pid_from(os.path.join(h.run_dir, "supervisor.pid")) != supervisor
    inst = client.instance(name)
    assert inst["state"] == "running" and inst["exit_code"] is None and inst["pid"] != pids[name]
    assert client.exec(name, ["echo", "alive"]).stdout == b"alive\n"
    client.kill(name, "KILL")
    inst = _wait_stopped(client, name)
    assert (inst["exit_code"], inst["exit_reason"]) == (137, "killed by SIGKILL")
    assert b"".join(client.logs(name)) == b"before\nbefore\n"
    r = vk(vk_home, "rm", name, name + "-paused", name + "-att")
    assert r.returncode == 0, r.stderr
