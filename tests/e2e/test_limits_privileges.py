"""Resource limits and default privileges, tried from inside a container."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import vk

pytestmark = pytest.mark.root


def test_memory_over_limit_is_oom_killed(vk_home, client, name):
    r = vk(vk_home, "run", "--name", name, "--memory", "16M", "busybox", "--", "sh", "-c",
           "x=0123456789; while true; do x=$x$x; done")
    assert r.returncode == 137
    inst = client.instance(name)
    assert inst["state"] == "stopped" and inst["exit_reason"] == "oom-killed"
    listing = vk(vk_home, "list").stdout.decode()
    assert "oom-killed" in listing
    client.remove(name)


def test_oom_kill_disable_waits_at_the_limit_and_can_still_be_stopped(vk_home, client, name):
    from virtkit.config import Home
    from virtkit.container.cgroups import detect_version
    from virtkit.container.cgroups.base import read_keyed

    if detect_version() != 1:
        r = vk(vk_home, "run", "--rm", "--memory", "16M", "--oom-kill-disable", "busybox", "--", "true")
        assert r.returncode != 0 and b"cannot disable the OOM killer" in r.stderr
        return
    r = vk(vk_home, "run", "-d", "--name", name, "--memory", "16M", "--oom-kill-disable", "--memory-swappiness", "0",
           "busybox", "--", "sh", "-c", "echo growing; x=0123456789; while true; do x=$x$x; done")
    assert r.returncode == 0, r.stderr
    memdir = f"/sys/fs/cgroup/memory{Home.from_env(vk_home).cgroup_parent}/{client.instance(name)['id']}"
    with open(f"{memdir}/memory.swappiness") as f:
        assert f.read().strip() == "0"
    deadline = time.monotonic() + 30
    while read_keyed(f"{memdir}/memory.oom_control").get("under_oom") != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert read_keyed(f"{memdir}/memory.oom_control")["under_oom"] == 1
    assert client.instance(name)["state"] == "running"      # at its limit, waiting, not killed
    r = vk(vk_home, "stop", "-t", "1", name, timeout=60)    # a task waiting at the limit cannot freeze: killed anyway
    assert r.returncode == 0, r.stderr
    inst = client.instance(name)
    assert (inst["state"], inst["exit_code"], inst["exit_reason"]) == ("stopped", 137, "killed by SIGKILL")
    r = vk(vk_home, "run", "--rm", "--oom-kill-disable", "busybox", "--", "true")
    assert r.returncode == 2 and b"oom_kill_disable: needs a memory limit" in r.stderr
    client.remove(name)


def test_fork_bomb_stops_at_pids_limit(vk_home, client, name):
    # once the limit is hit nothing in the container can fork: report with shell builtins only
    script = ("( while true; do sleep 30 & done ) 2>/tmp/err; "
              "while read -r l; do echo \"ERR $l\"; done </tmp/err; "
              "n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo running=$n; kill -9 -1; echo done")
    r = vk(vk_home, "run", "--rm", "--pids", "16", "busybox", "--", "sh", "-c", script, timeout=90)
    out = r.stdout.decode()
    assert "can't fork" in out and "done" in out, (out, r.stderr)
    running = int(out.split("running=")[1].split()[0])
    assert 10 <= running <= 16


def test_cpu_quota_limits_usage(vk_home, client, name):
    client.run("busybox", ["sh", "-c", "while true; do :; done"], detach=True, name=name, cpus=0.2)
    time.sleep(0.5)
    first = client.stats(name)["cpu_usage_ns"]
    t0 = time.monotonic()
    time.sleep(3)
    used = client.stats(name)["cpu_usage_ns"] - first
    share = used / ((time.monotonic() - t0) * 1e9)
    client.remove(name, force=True)
    assert 0.1 <= share <= 0.3, f"used {share:.0%} of a core with --cpus 0.2"


def _sh(vk_home: str, script: str, *flags: str) -> str:
    r = vk(vk_home, "run", "--rm", *flags, "busybox", "--", "sh", "-c", script)
    return r.stdout.decode() + r.stderr.decode()


def test_default_privileges_are_dropped(vk_home, client):
    out = _sh(vk_home, "mount -t tmpfs none /mnt && echo MOUNTED; "
                       "date -s 2001-01-01 2>&1 | grep -q 'not permitted' || echo CLOCK-SET; "
                       "mknod /tmp/sda b 8 0 && echo MKNOD; "
                       "ping -c1 -W1 127.0.0.1 >/dev/null 2>&1 && echo PING; "
                       "grep -E '^Cap(Inh|Eff)' /proc/self/status")
    for forbidden in ("MOUNTED", "CLOCK-SET", "MKNOD", "PING"):
        assert forbidden not in out, out
    assert "CapInh:\t0000000000000000" in out
    cap_eff = int(out.split("CapEff:\t")[1].split()[0], 16)
    assert cap_eff & (1 << 21) == 0 and cap_eff & (1 << 16) == 0    # no SYS_ADMIN, no SYS_MODULE


def test_cap_add_net_raw_allows_raw_sockets(vk_home, client):
    out = _sh(vk_home, "ping -c1 -W2 127.0.0.1 >/dev/null && echo PING-OK", "--cap-add", "NET_RAW")
    assert "PING-OK" in out, out


def test_host_devices_are_not_reachable(vk_home, client):
    out = _sh(vk_home, "ls /dev; cat /dev/vda >/dev/null 2>&1 && echo READ-DISK; "
                       "head -c 1 /dev/mem >/dev/null 2>&1 && echo READ-MEM; echo done")
    assert "READ-DISK" not in out and "READ-MEM" not in out and "done" in out
    assert "vda" not in out.split("done")[0]
