"""Snapshots end to end: exact restore, a running container frozen for a consistent copy, errors, cleanup."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from tests.e2e.conftest import vk
from tests.storage.helpers import describe, leftovers
from virtkit.core.errors import AlreadyExists, InvalidArgument, InvalidState, NotFound

pytestmark = pytest.mark.root


def _snap_dir(vk_home: str, iid: str, snap: str = "") -> str:
    return os.path.join(vk_home, "snapshots", iid, snap) if snap else os.path.join(vk_home, "snapshots", iid)


def _upper(vk_home: str, iid: str) -> str:
    return os.path.join(vk_home, "containers", iid, "upper")


def _sh(vk_home: str, name: str, script: str) -> str:
    r = vk(vk_home, "exec", name, "--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode()


def test_snapshot_restore_is_exact(vk_home, client, name):
    assert vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "sleep", "600").returncode == 0
    _sh(vk_home, name, "echo v1 > /etc/changed; echo new > /root/added; rm /etc/passwd; mkdir -p /srv/a/b;"
                       " echo deep > /srv/a/b/f; ln /srv/a/b/f /srv/hard; ln -s /srv/a /srv/sym;"
                       " chown 1234:5678 /srv/a/b/f; chmod 4711 /srv/a/b/f")
    r = vk(vk_home, "snapshot", name, "s1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[:2] == [name, "s1"]
    iid = client.instance(name)["id"]
    assert client.instance(name)["state"] == "running"
    assert describe(_snap_dir(vk_home, iid, "s1")) == describe(_upper(vk_home, iid))

    listed = json.loads(vk(vk_home, "snapshot", "list", name, "--json").stdout)
    assert [s["name"] for s in listed] == ["s1"] and listed[0]["size"] > 0
    assert abs(listed[0]["created_at"] - time.time()) < 60
    table = vk(vk_home, "snapshot", "list", name).stdout.decode()
    assert table.splitlines()[0].split() == ["NAME", "SIZE", "CREATED"] and "s1" in table

    # change everything: modify, add, delete (also what the snapshot added), restore brings s1 back
    _sh(vk_home, name, "echo v2 > /etc/changed; echo later > /etc/later; rm /root/added; rm -r /srv;"
                       " echo back > /etc/passwd")
    r = vk(vk_home, "restore", name, "s1")
    assert r.returncode == 1 and b"cannot restore instance" in r.stderr and b"running" in r.stderr
    assert vk(vk_home, "stop", "-t", "0", name).returncode == 0
    r = vk(vk_home, "restore", name, "s1")
    assert r.returncode == 0, r.stderr
    assert describe(_upper(vk_home, iid)) == describe(_snap_dir(vk_home, iid, "s1"))
    assert vk(vk_home, "start", name).returncode == 0
    out = _sh(vk_home, name, "cat /etc/changed /root/added /srv/a/b/f /srv/sym/b/f; ls /etc/later /etc/passwd 2>&1;"
                             " stat -c '%u:%g %a %h' /srv/a/b/f")
    lines = out.splitlines()
    assert lines[:4] == ["v1", "new", "deep", "deep"]
    assert "No such file" in lines[4] and "No such file" in lines[5]
    assert lines[6] == "1234:5678 4711 2"
    # restoring twice is fine, and the snapshot itself did not change
    vk(vk_home, "stop", "-t", "0", name)
    assert vk(vk_home, "snapshot", "restore", name, "s1").returncode == 0

    r = vk(vk_home, "snapshot", "rm", name, "s1")
    assert r.returncode == 0, r.stderr
    assert client.snapshots(name) == [] and not os.path.exists(_snap_dir(vk_home, iid, "s1"))
    client.remove(name, force=True)


def test_running_container_is_frozen_for_a_consistent_copy(vk_home, client, name):
    """A writer rewrites files 1..8 with one generation number, over and over. A frozen copy sees one
    moment: files 1..k at generation g+1, maybe one being written (empty), the rest at g. A copy that
    raced the writer would mix generations further apart or out of order."""
    from virtkit.config import Home
    from virtkit.container.cgroups import manager_for

    writer = ("dd if=/dev/urandom of=/ballast bs=1M count=64 2>/dev/null; mkdir /w; echo ready > /ready; i=0;"
              " while :; do i=$((i+1)); for f in 1 2 3 4 5 6 7 8; do echo $i > /w/$f; done; done")
    assert vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "sh", "-c", writer).returncode == 0
    iid = client.instance(name)["id"]
    deadline = time.time() + 20
    while not os.path.exists(os.path.join(_upper(vk_home, iid), "ready")) and time.time() < deadline:
        time.sleep(0.05)
    cg = manager_for(f"{Home.from_env(vk_home).cgroup_parent}/{iid}")
    seen_frozen: list[bool] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            seen_frozen.append(cg.is_frozen())
            time.sleep(0.002)

    for snap in ("c1", "c2", "c3"):
        seen_frozen.clear()
        stop.clear()
        t = threading.Thread(target=watch)
        t.start()
        try:
            client.snapshot(name, snap)
        finally:
            stop.set()
            t.join()
        assert any(seen_frozen), "the container was never frozen during the snapshot"
        assert not cg.is_frozen()                                   # thawed again
        values = []
        for f in range(1, 9):
            with open(os.path.join(_snap_dir(vk_home, iid, snap), "w", str(f))) as fh:
                text = fh.read().strip()
            values.append(int(text) if text else None)
        gens = [v for v in values if v is not None]
        assert max(gens) - min(gens) <= 1, values
        assert values.count(None) <= 1, values
        assert gens == sorted(gens, reverse=True), values         # newer generation first, in write order
        if None in values:
            k = values.index(None)
            assert all(v == max(gens) for v in values[:k]) and all(v == min(gens) for v in values[k + 1:]), values

    # it kept running, the writer goes on, and the freeze was not recorded as a pause
    inst = client.instance(name)
    assert inst["state"] == "running"
    def generation() -> int:
        # any one file may be caught truncated mid-rewrite; the newest generation across them is stable
        return max((int(x) for x in _sh(vk_home, name, "cat /w/*").split()), default=0)

    before = generation()
    time.sleep(0.3)
    assert generation() > before
    assert [s["name"] for s in client.snapshots(name)] == ["c1", "c2", "c3"]
    client.remove(name, force=True)
    assert not os.path.exists(_snap_dir(vk_home, iid))                      # snapshots went with it


def test_snapshot_of_a_stopped_and_a_paused_container(vk_home, client, name):
    assert vk(vk_home, "run", "--name", name, "busybox", "--", "sh", "-c", "echo x > /x").returncode == 0
    client.snapshot(name, "stopped")
    iid = client.instance(name)["id"]
    with open(os.path.join(_snap_dir(vk_home, iid, "stopped"), "x")) as f:
        assert f.read() == "x\n"
    client.start(name)
    other = f"{name}-p"
    client.create("busybox", ["sh", "-c", "echo p > /p; sleep 60"], name=other, start=True)
    time.sleep(0.2)
    client.pause(other)
    client.snapshot(other, "paused")
    assert client.instance(other)["state"] == "paused"                  # still paused: not thawed by us
    client.resume(other)
    client.remove(other, force=True)
    client.remove(name, force=True)


def test_snapshot_errors_leave_nothing(vk_home, client, name):
    assert vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "sleep", "600").returncode == 0
    iid = client.instance(name)["id"]
    client.snapshot(name, "one")
    with pytest.raises(AlreadyExists, match=f"instance '{name}' already has a snapshot named 'one'"):
        client.snapshot(name, "one")
    for bad in ("bad/name", "", "-x", "a" * 64, ".hidden"):
        with pytest.raises(InvalidArgument, match="snapshot: invalid name"):
            client.snapshot(name, bad)
    r = vk(vk_home, "snapshot", name, "bad/name")
    assert r.returncode == 2 and b"snapshot: invalid name" in r.stderr
    with pytest.raises(NotFound, match="instance 'nope-x' not found"):
        client.snapshot("nope-x", "s")
    with pytest.raises(NotFound, match=f"instance '{name}' has no snapshot named 'two'"):
        client.restore(name, "two")
    with pytest.raises(InvalidState, match="running"):
        client.restore(name, "one")
    r = vk(vk_home, "snapshot", "rm", name, "two")
    assert r.returncode == 1 and b"no snapshot named 'two'" in r.stderr
    r = vk(vk_home, "snapshot", "a", "b", "c", "d")
    assert r.returncode == 2 and b"usage: virtkit snapshot" in r.stderr
    assert sorted(os.listdir(_snap_dir(vk_home, iid))) == ["one"]
    assert leftovers(os.path.join(vk_home, "snapshots")) == []
    client.remove(name, force=True)
    assert not os.path.exists(_snap_dir(vk_home, iid))
