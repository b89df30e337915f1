"""Containers end to end through the CLI and the SDK: isolation, lifecycle, logs, exec, volumes."""

from __future__ import annotations

import json
import os
import time

import pytest

from tests.e2e.conftest import vk
from virtkit.core.errors import InvalidState, NotFound

pytestmark = pytest.mark.root


def test_run_rm_is_pid1_with_own_hostname_and_root(vk_home, client, name):
    r = vk(vk_home, "run", "--rm", "--name", name, "busybox", "--", "sh", "-c", "echo $$; hostname; id -u")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["1", name, "0"]
    assert name not in [i["name"] for i in client.instances()]     # --rm removed it


def test_run_returns_exit_code(vk_home, client, name):
    r = vk(vk_home, "run", "--rm", "busybox", "--", "sh", "-c", "echo out; exit 7")
    assert r.returncode == 7
    assert r.stdout == b"out\n"


def test_isolation_processes_mounts_network(vk_home, client, name):
    script = "ps -o pid,comm; echo ---; cat /proc/mounts; echo ---; ip -o link; ip -o addr show lo"
    r = vk(vk_home, "run", "--rm", "--network", "none", "busybox", "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    procs, mounts, net = r.stdout.decode().split("---\n")
    pids = [line.split()[0] for line in procs.strip().splitlines()[1:]]
    assert "1" in pids and len(pids) <= 3, procs             # sh (pid 1), ps; nothing of the host
    # overlayfs names its host layer dirs in its options (as under Docker); what must not appear is a host mount
    mountpoints = [line.split()[1] for line in mounts.strip().splitlines()]
    allowed = ("/proc", "/dev", "/sys", "/etc/hosts", "/etc/hostname")
    assert mountpoints[0] == "/" and all(m.startswith(allowed) for m in mountpoints[1:]), mountpoints
    link_lines = [line for line in net.splitlines() if " link/" in line]
    assert [line.split(":")[1].strip() for line in link_lines] == ["lo"], net
    assert ",UP" in link_lines[0] and "127.0.0.1" in net


def test_a_detached_rm_instance_goes_when_it_exits_unasked(vk_home, client, name):
    """virtkitd notices the exit by itself (its reconcile loop) and removes the instance: no request looks at it."""
    import sqlite3

    from virtkit.config import Home

    r = vk(vk_home, "run", "-d", "--rm", "--name", name, "--network", "none", "busybox", "--", "sleep", "0.3")
    assert r.returncode == 0, r.stderr
    home = Home.from_env(vk_home)
    db = sqlite3.connect(home.db)
    try:
        iid = db.execute("SELECT id FROM instances WHERE name = ?", (name,)).fetchone()[0]
        deadline = time.monotonic() + 5
        while db.execute("SELECT 1 FROM instances WHERE id = ?", (iid,)).fetchone():
            assert time.monotonic() < deadline, "the exited --rm instance is still in the store"
            time.sleep(0.05)
    finally:
        db.close()
    assert not os.path.exists(os.path.join(home.root, "containers", iid))


def _root_options(client, name: str) -> str:
    line = client.exec(name, ["sh", "-c", "grep ' / / ' /proc/self/mountinfo"]).stdout.decode()
    assert " - overlay " in line, line
    return line.rsplit(" ", 1)[1]


def test_only_a_rm_instance_has_a_volatile_writable_layer(vk_home, client, name):
    """An instance removed at exit keeps nothing: its overlay skips syncing to disk (volatile, as podman's
    `run --rm`); one that is kept has its writes synced as usual."""
    client.run("busybox", ["sleep", "600"], detach=True, auto_remove=True, name=name)
    client.run("busybox", ["sleep", "600"], detach=True, name=name + "-kept")
    assert "volatile" in _root_options(client, name)
    assert "volatile" not in _root_options(client, name + "-kept")
    client.remove(name, force=True)
    client.remove(name + "-kept", force=True)


def test_restart_keeps_a_rm_instance_and_its_files(vk_home, client, name):
    """A restart is not an exit: the --rm instance comes back with its writable layer (overlayfs would refuse
    the volatile upper dir again unless the start clears the mark the last mount left), as Docker does; an exit
    after that removes it."""
    client.run("busybox", ["sh", "-c", "echo x >> /runs; sleep 600"], detach=True, auto_remove=True, name=name)
    time.sleep(0.3)
    r = vk(vk_home, "restart", "-t", "1", name)
    assert r.returncode == 0, r.stderr
    assert client.instance(name)["state"] == "running"
    deadline = time.monotonic() + 5
    while client.exec(name, ["cat", "/runs"]).stdout != b"x\nx\n":
        assert time.monotonic() < deadline, client.exec(name, ["cat", "/runs"]).stdout
        time.sleep(0.05)
    assert vk(vk_home, "stop", "-t", "1", name).returncode == 0
    with pytest.raises(NotFound):
        client.instance(name)


def test_detached_lifecycle_list_exec_logs_stop(vk_home, client, name):
    r = vk(vk_home, "run", "-d", "--name", name, "--cpus", "0.5", "--memory", "64M", "--pids", "64",
           "busybox", "--", "sh", "-c", "echo started; echo to-stderr >&2; exec httpd -f -p 8080")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == name
    listed = {i["name"]: i for i in json.loads(vk(vk_home, "list", "--json").stdout)}
    assert listed[name]["state"] == "running" and listed[name]["pid"] > 0
    assert os.path.exists(f"/proc/{listed[name]['pid']}")

    ex = vk(vk_home, "exec", name, "--", "sh", "-c",
            "hostname; cat /proc/1/comm; wget -qO- http://127.0.0.1:8080/ 2>&1 | head -c 0; echo ok")
    assert ex.returncode == 0, ex.stderr
    assert ex.stdout.decode().split() == [name, "httpd", "ok"]
    assert vk(vk_home, "exec", name, "--", "sh", "-c", "exit 5").returncode == 5

    deadline = time.time() + 5
    while b"to-stderr" not in vk(vk_home, "logs", name).stderr and time.time() < deadline:
        time.sleep(0.1)
    logs = vk(vk_home, "logs", name)
    assert logs.stdout == b"started\n" and logs.stderr == b"to-stderr\n"

    stats = client.stats(name)
    assert stats["memory_limit"] == 64 << 20 and stats["pids_limit"] == 64 and stats["pids_current"] >= 1

    # httpd is PID 1 without a SIGTERM handler: the kernel ignores SIGTERM, so stop escalates to SIGKILL
    r = vk(vk_home, "stop", "-t", "1", name)
    assert r.returncode == 0, r.stderr
    inst = client.instance(name)
    assert inst["state"] == "stopped" and inst["exit_code"] == 137 and "SIGKILL" in inst["exit_reason"]
    with pytest.raises(InvalidState, match="not|stopped"):
        client.exec(name, ["true"])
    r = vk(vk_home, "exec", name, "--", "true")
    assert r.returncode != 0 and b"stopped" in r.stderr

    assert vk(vk_home, "start", name).returncode == 0
    assert client.instance(name)["state"] == "running"
    assert vk(vk_home, "restart", "-t", "1", name).returncode == 0
    assert client.instance(name)["state"] == "running"
    r = vk(vk_home, "rm", name)
    assert r.returncode != 0 and b"stop it first" in r.stderr
    assert vk(vk_home, "rm", "-f", name).returncode == 0
    with pytest.raises(NotFound):
        client.instance(name)


def _held_by_supervisor(vk_home: str) -> set[str]:
    with open(os.path.join(vk_home, "run", "supervisor.pid")) as f:
        pid = int(f.read())
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            continue
    return out


def test_kill_with_signal_and_exit_reason(vk_home, client, name):
    client.run("busybox", ["sh", "-c", "trap 'exit 3' USR1; while true; do sleep 0.1; done"], detach=True, name=name)
    # the supervisor holds the container's mount namespace while it runs (its mounts go after the exit is told)
    mntns = os.readlink(f"/proc/{client.instance(name)['pid']}/ns/mnt")
    assert mntns in _held_by_supervisor(vk_home)
    assert vk(vk_home, "kill", "-s", "USR1", name).returncode == 0
    deadline = time.time() + 5
    while client.instance(name)["state"] != "stopped" and time.time() < deadline:
        time.sleep(0.05)
    inst = client.instance(name)
    assert (inst["state"], inst["exit_code"], inst["exit_reason"]) == ("stopped", 3, "exited")
    # the supervisor took its (empty) cgroup away as it recorded the exit, before any rm
    from virtkit.config import Home
    from virtkit.container.cgroups import manager_for

    assert not manager_for(f"{Home.from_env(vk_home).cgroup_parent}/{inst['id']}").exists()
    assert mntns not in _held_by_supervisor(vk_home)     # and let go of its mount namespace
    client.remove(name)


def test_pause_and_resume(vk_home, client, name):
    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    assert vk(vk_home, "pause", name).returncode == 0
    assert client.instance(name)["state"] == "paused"
    with pytest.raises(InvalidState):
        client.exec(name, ["true"])
    assert vk(vk_home, "resume", name).returncode == 0
    assert client.exec(name, ["echo", "back"]).stdout == b"back\n"
    client.remove(name, force=True)


def test_exec_interactive_stdin(vk_home, client, name):
    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    r = vk(vk_home, "exec", "-i", name, "--", "sh", input=b"echo from-stdin; hostname\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["from-stdin", name]
    client.remove(name, force=True)


def test_volumes_rw_and_ro(vk_home, client, name, tmp_path):
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "keep").write_text("original\n")
    r = vk(vk_home, "run", "--rm", "-v", f"{rw}:/data", "-v", f"{ro}:/conf:ro", "busybox", "--", "sh", "-c",
           "echo written > /data/out; cat /conf/keep; (echo x > /conf/keep) 2>/dev/null && echo WROTE || echo refused")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split() == ["original", "refused"]
    assert (rw / "out").read_text() == "written\n"
    assert (ro / "keep").read_text() == "original\n"


def test_file_changes_stay_in_the_instance(vk_home, client, name):
    client.run("busybox", ["sh", "-c", "echo mine > /etc/marker; rm /bin/vi; sleep 600"], detach=True, name=name)
    time.sleep(0.3)
    assert client.exec(name, ["cat", "/etc/marker"]).stdout == b"mine\n"
    r = vk(vk_home, "run", "--rm", "busybox", "--", "sh", "-c",
           "cat /etc/marker 2>/dev/null || echo absent; ls /bin/vi")
    assert r.stdout.decode().split() == ["absent", "/bin/vi"]
    client.remove(name, force=True)


def test_a_started_container_writes_nothing_of_its_own_until_it_does(vk_home, client, name):
    """/etc/hosts and /etc/hostname are mounted over placeholders of the home's init layer: nothing is made in
    the container's writable layer to start it (nor published with it later)."""
    from virtkit.config import Home

    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    upper = os.path.join(Home.from_env(vk_home).instance_dir(client.instance(name)["id"]), "upper")
    assert os.listdir(upper) == []
    assert client.exec(name, ["cat", "/etc/hostname"]).stdout == f"{name}\n".encode()
    assert client.exec(name, ["sh", "-c", "echo x > /etc/hosts"]).exit_code != 0     # read-only, as before
    assert os.listdir(upper) == []
    client.remove(name, force=True)


def test_exec_with_a_terminal(vk_home, client, name):
    client.run("busybox", ["sleep", "600"], detach=True, name=name)
    out: list[bytes] = []

    def keys():
        yield b"tty; stty size; echo $((6*7))\n"
        time.sleep(0.5)
        yield b"exit 3\n"

    code = client.exec_stream(name, ["sh"], tty=True, stdin=keys(), size=(30, 100), on_stdout=out.append)
    text = b"".join(out).decode()
    assert code == 3
    assert "/dev/pts/0" in text and "30 100" in text and "42" in text, text
    client.remove(name, force=True)
