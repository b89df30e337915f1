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
