"""End-to-end fixtures: a private virtkit home with its own daemon, the busybox image, and a leak check."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

VENV_BIN = os.path.dirname(sys.executable)


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: namespaces, mounts and cgroups (CI runs as root)")


def _pid_from(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def teardown_home(home: str) -> list[str]:
    """Remove every instance, stop daemon and supervisor, delete the home; return what was left behind."""
    from virtkit.client import connect
    from virtkit.config import Home

    h = Home.from_env(home)
    client = connect(home)           # starts a daemon if a test killed it: its instances must go too
    if os.path.exists(h.db):
        for inst in client.instances():
            try:
                client.remove(inst["name"], force=True)
            except Exception:
                pass
        try:
            client.shutdown()
        except Exception:
            pass
    for name in ("virtkitd.pid", "supervisor.pid"):
        pid = _pid_from(os.path.join(h.run_dir, name))
        deadline = time.monotonic() + 5
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
    leaks = []
    with open("/proc/self/mountinfo") as f:
        mounts = [line for line in f if home in line]
    if mounts:
        leaks.append(f"mounts: {mounts}")
    for root, dirs, _files in os.walk("/sys/fs/cgroup"):
        for d in dirs:
            if d == f"virtkit-{h.id}":
                leaks.append(f"cgroup: {os.path.join(root, d)}")
        if root.count("/") > 4:
            dirs[:] = []
    shutil.rmtree(home, ignore_errors=True)
    return leaks


@pytest.fixture(scope="session")
def vk_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    _require_root()
    home = str(tmp_path_factory.mktemp("vkhome"))
    yield home
    leaks = teardown_home(home)
    assert not leaks, f"virtkit left these behind: {leaks}"


@pytest.fixture(scope="session")
def client(vk_home: str):  # type: ignore[no-untyped-def]
    from virtkit.client import connect

    c = connect(vk_home)
    c.build_image("busybox")
    return c


@pytest.fixture
def name() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def vk(home: str, *args: str, input: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the `virtkit` CLI as a user would."""
    return subprocess.run([os.path.join(VENV_BIN, "virtkit"), "--home", home, *args], input=input,
                          capture_output=True, timeout=timeout)
