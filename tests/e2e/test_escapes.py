"""Escape attempts from inside a virtkit container, each of which must fail."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.e2e.conftest import vk
from virtkit.container.caps import CAPS

pytestmark = pytest.mark.root
HERE = os.path.dirname(__file__)


def _static_program(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    """Build tests/e2e/data/NAME.c as a static binary; the folder holding it is mounted into containers."""
    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build the probe programs (scripts/setup.sh installs it)")
    out = tmp_path_factory.mktemp(name)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(out / name), os.path.join(HERE, "data", f"{name}.c")],
                   check=True)
    os.chmod(out, 0o755)
    return str(out)


@pytest.fixture(scope="module")
def attacker(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _static_program(tmp_path_factory, "attacker")


@pytest.fixture(scope="module")
def privs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _static_program(tmp_path_factory, "privs")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_exec_cannot_be_hijacked_through_proc_exe_or_ptrace(vk_home, client, name, attacker):
    """CVE-2019-5736 class: a process joining the container on exec must not expose the host runtime."""
    runtime_binary = os.path.realpath(sys.executable)
    before = _sha256(runtime_binary)
    # the attacker scans until told to stop; the execs go on for 5 s and until at least 3 have been made (on a
    # loaded machine one exec can take seconds), so there is always something to attack
    client.run("busybox", ["/t/attacker", "300"], detach=True, name=name, volumes=[f"{attacker}:/t:ro"])
    start = time.monotonic()
    execs = 0

    def hammer() -> None:
        nonlocal execs
        while (time.monotonic() - start < 5 or execs < 3) and time.monotonic() - start < 120:
            vk(vk_home, "exec", name, "--", "true")
            execs += 1

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.kill(name, "TERM")       # the attacker prints its scan count and exits
    deadline = time.monotonic() + 10
    while client.instance(name)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    out = b"".join(client.logs(name)).decode()
    client.remove(name, force=True)
    assert "scans" in out, out
    assert execs >= 3
    for bad in ("HOST-EXE-OPENED", "EXE-WRITABLE", "PTRACE-HOST"):
        assert bad not in out, out
    assert _sha256(runtime_binary) == before


def test_ptrace_capable_container_gains_nothing_from_an_exec(vk_home, client, name, attacker):
    """With CAP_SYS_PTRACE granted, a process entering through exec can be traced before it execs; by then it
    must hold no more than the container itself (no SYS_ADMIN, SYS_MODULE...), and its binary stays unwritable."""
    client.run("busybox", ["/t/attacker", "5"], detach=True, name=name, volumes=[f"{attacker}:/t:ro"],
               cap_add=["SYS_PTRACE"])
    stop = time.monotonic() + 4
    while time.monotonic() < stop:
        vk(vk_home, "exec", name, "--", "true")
    deadline = time.monotonic() + 10
    while client.instance(name)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    out = b"".join(client.logs(name)).decode()
    client.remove(name, force=True)
    assert "scans" in out and "EXE-WRITABLE" not in out, out
    container_caps = 0
    for cap in ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "SETGID", "SETUID", "SETFCAP", "SETPCAP",
                "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE", "SYS_PTRACE"):
        container_caps |= 1 << CAPS[f"CAP_{cap}"]
    for line in out.splitlines():
        if line.startswith("PTRACE-HOST"):
            held = int(line.split("CapEff=")[1], 16)
            assert held & ~container_caps == 0, f"a traced exec held more than the container: {line}"


def test_cgroup_release_agent_cannot_be_set(vk_home, client):
    """CVE-2022-0492 class: no writable release_agent, and no way to mount a cgroup hierarchy."""
    r = vk(vk_home, "run", "--rm", "busybox", "--", "sh", "-c",
           "for f in /sys/fs/cgroup/*/release_agent /sys/fs/cgroup/release_agent; do "
           "[ -e $f ] && (echo /evil > $f) 2>/dev/null && echo WROTE $f; done; "
           "mkdir -p /tmp/cg; mount -t cgroup -o memory cgroup /tmp/cg 2>/dev/null && echo MOUNTED; "
           "unshare -U -r -C true 2>/dev/null && echo UNSHARED; echo done")
    out = r.stdout.decode()
    assert "done" in out and "WROTE" not in out and "MOUNTED" not in out and "UNSHARED" not in out, out


def test_device_nodes_made_with_mknod_stay_unusable(vk_home, client):
    """With CAP_MKNOD granted, a node for the host's disk can be made, but the device cgroup refuses it."""
    major_minor = os.stat("/").st_dev
    major, minor = os.major(major_minor), os.minor(major_minor)
    r = vk(vk_home, "run", "--rm", "--cap-add", "MKNOD", "busybox", "--", "sh", "-c",
           f"mknod /tmp/disk b {major} {minor} && echo MADE; head -c 1 /tmp/disk >/dev/null 2>&1 && echo READ; "
           "mknod /tmp/mem c 1 1 && (head -c 1 /tmp/mem >/dev/null 2>&1 && echo MEM); echo done")
    out = r.stdout.decode()
    assert "done" in out and "READ" not in out and "MEM" not in out, out


def _probe(vk_home: str, privs: str, *flags: str) -> dict[str, str]:
    r = vk(vk_home, "run", "--rm", "-v", f"{privs}:/t:ro", *flags, "busybox", "--", "/t/privs")
    assert r.returncode == 0, r.stderr
    return dict(line.split(" ", 1) for line in r.stdout.decode().splitlines())


def test_default_container_cannot_use_privileged_calls(vk_home, client, privs):
    res = _probe(vk_home, privs)
    assert res.pop("getpid") == "ok"              # the probe itself runs
    allowed = {k: v for k, v in res.items() if v == "ok"}
    assert not allowed, f"privileged calls succeeded in a default container: {allowed}"


def test_cap_add_net_raw_grants_raw_sockets_only(vk_home, client, privs):
    res = _probe(vk_home, privs, "--cap-add", "NET_RAW")
    assert res["raw_socket"] == "ok" and res["packet_socket"] == "ok"
    assert res["mount"] != "ok" and res["init_module"] != "ok" and res["clock_settime"] != "ok"
