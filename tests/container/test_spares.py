"""Spares (container/spares.py): a container's PID 1 made ahead of time gives the same world as a forked one."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.container.test_runtime import _run
from virtkit.container import premount
from virtkit.container import syscalls as sc
from virtkit.core.errors import NotFound, SystemFailure

pytestmark = pytest.mark.root

WORLD = ("echo pid=$$; hostname; ls /proc | grep -E '^[0-9]+$' | tr '\\n' ' '; echo; cat /proc/self/cgroup;"
         "echo policy; cut -d' ' -f41 /proc/self/stat;"
         # each mount but its ids (and device numbers): where, flags, type, source and file system options; then
         # /dev as ls shows it (nodes' types, modes, owners and numbers, links' targets, mount points)
         "echo mounts; cut -d' ' -f4- /proc/self/mountinfo; echo dev;"
         " ls -lna /dev /dev/pts /dev/shm /dev/mqueue | awk '{print $1, $3, $4, $5, $6, $NF}';"
         " echo ifaces; ip -o link; echo end")

KIND = sc.CLONE_NEWPID | sc.CLONE_NEWNET | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC


@pytest.fixture
def spares(runtime):
    from virtkit.container.spares import Spares

    pool = Spares()
    runtime.spares = pool
    yield pool
    pool.close()


def _ready(pool, kind=KIND) -> int:
    """Make a spare of this kind now; its pid, once it reported ready."""
    from virtkit.container.spares import _reported

    pool.wanted.add(kind)
    pool.fill()
    deadline = time.monotonic() + 5
    while True:     # the maker answers, then the spare reports when it is ready (never waited for by take)
        pool.collect()
        held = (pool.ready.get(kind) or [None])[-1]
        if held is not None and _reported(held, kind, pool.wanted):
            return held[0]
        assert time.monotonic() < deadline, "the spare never reported"
        time.sleep(0.005)


def _world(out: str) -> dict:
    head, rest = out.split("mounts\n")
    head, policy = head.split("policy\n")
    mounts, rest = rest.split("dev\n", 1)
    dev, rest = rest.split("ifaces\n")
    lines = head.splitlines()
    return {"pid": lines[0], "hostname": lines[1], "procs": lines[2].split(), "policy": policy.strip(),
            "cgroups": sorted({ln.split(":", 2)[2] for ln in lines[3:]}),
            "mounts": mounts.splitlines(), "dev": dev.splitlines(),
            "links": [ln.split(":")[1].strip() for ln in rest.split("end")[0].splitlines()],
            "lo_up": ",UP" in rest}


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[1][0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.01)
    return False


@pytest.mark.parametrize("own_cgroup", [False, True], ids=["joins-its-cgroup", "waits-in-its-own-cgroup"])
def test_a_spare_gives_the_world_a_fork_gives(runtime, spares, cid, bundle, own_cgroup):
    from virtkit.container.cgroups import detect_version

    if own_cgroup and detect_version() != 1:
        pytest.skip("cgroup v2 cannot rename a cgroup: a spare never waits in one of its own to become its container's")
    bundle.spec["hostname"] = "vk-spare"
    runtime.spares = None
    code, forked = _run(runtime, cid, bundle, "sh", "-c", WORLD)
    assert code == 0, forked
    runtime.spares = spares
    if own_cgroup:      # then its cgroup namespace and its /sys/fs/cgroup are made before it is taken
        spares.parents[KIND] = os.path.dirname(bundle.spec["linux"]["cgroupsPath"])
    spare = _ready(spares)
    assert (spares.ready[KIND][-1][2] is not None) == own_cgroup
    bundle.args("sh", "-c", WORLD + "; sleep 0.2").save()
    with open(os.path.join(bundle.path, "out"), "w+") as f, open(os.devnull) as null:
        state = runtime.create(cid, bundle.path, stdio=(null.fileno(), f.fileno(), f.fileno()))
        assert state["pid"] == spare                    # the spare became the container's PID 1
        assert not spares.ready[KIND]                   # and left the pool
        runtime.start(cid)
        while runtime.state(cid)["status"] != "stopped":
            time.sleep(0.01)
        runtime.delete(cid)
        f.seek(0)
        taken = f.read()
    a, b = _world(forked), _world(taken)
    pa, pb = a.pop("procs"), b.pop("procs")             # the pipeline's pids vary from run to run
    assert "1" in pa and "1" in pb and max(map(int, pa + pb)) < 20, (pa, pb)
    assert b == a, (forked, taken)
    assert b["pid"] == "pid=1" and b["hostname"] == "vk-spare" and b["links"] == ["lo"] and b["lo_up"]
    assert b["cgroups"] == ["/"]                         # its cgroup namespace is rooted at its own cgroup
    assert b["policy"] == "0"                           # SCHED_OTHER: a spare waits as SCHED_IDLE, not its container


def test_a_host_mount_made_after_the_spare_is_seen(runtime, spares, cid, bundle, tmp_path):
    _ready(spares)
    src = tmp_path / "later"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src)], check=True)
    try:
        (src / "made-after").write_text("here\n")
        bundle.spec["mounts"].append({"destination": "/mnt", "type": "bind", "source": str(src),
                                      "options": ["rbind", "ro"]})
        code, out = _run(runtime, cid, bundle, "cat", "/mnt/made-after")
        assert (code, out) == (0, "here\n")
        assert not spares.ready[KIND]                   # it was the spare that ran it
    finally:
        subprocess.run(["umount", str(src)], check=True)


def test_a_spare_holds_none_of_its_makers_fds(spares):
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        pid = _ready(spares)
        # it reports its pid before it reads the host's cgroup mounts, brings its loopback up (a file and a
        # netlink socket open for a moment) and makes its mounts: what counts is what it holds once it waits
        # /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, /sys; not /sys/fs/cgroup: it waits in no cgroup of its own
        premade = len([m for m in premount._template() if m["type"] != "cgroup"])
        deadline = time.monotonic() + 5
        while True:
            fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
            held = {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds[3:]}
            if len(fds) == 4 + premade and "/" in held.values() or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        assert fds[:3] == [0, 1, 2] and len(fds) == 4 + premade, held   # stdio, its channel, its mounts
        sockets = [fd for fd, what in held.items() if what.startswith("socket:")]
        mounts = [fd for fd, what in held.items() if what == "/"]
        assert len(sockets) == 1 and len(mounts) == premade, held
        for fd in mounts:       # each the root of a mount of its own, not a file or a directory of the host's
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)
            assert int(info["flags"], 8) & 0o10000000, info                   # O_PATH
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[38] == "5"     # SCHED_IDLE while it waits
    finally:
        os.close(r)
        os.close(w)


def test_spares_go_with_their_keeper(spares):
    pid = _ready(spares)
    spares.close()
    assert _gone(pid)
    pid = _ready(spares)
    spares.ready[KIND][-1][1].close()                   # the keeper died: its end of the channel closes
    assert _gone(pid)


def test_a_spare_not_ready_yet_is_not_waited_for():
    """A spare is made at the lowest priority: on a busy host it may not have reported when a container asks.
    take() must not wait for it (it would wait as long as the host stays busy): it drops it and says none."""
    import _socket
    import threading

    from virtkit.container.spares import Spares

    pool = Spares()
    ours, its = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)   # a spare that never reports
    pool.wanted.add(KIND)
    pool.ready[KIND] = [[0, ours, None, False]]
    got: list = []
    t = threading.Thread(target=lambda: got.append(pool.take(KIND)), daemon=True)
    t.start()
    t.join(2)
    assert got == [None]
    assert its.recv(16) == b""                          # its channel was closed: a real spare exits on that
    its.close()


def test_containers_spares_cannot_serve_fork_as_before(runtime, spares, cid, bundle):
    spare = _ready(spares)
    # no pid namespace of its own (a spare is always PID 1 of a new one)
    bundle.spec["linux"]["namespaces"] = [ns for ns in bundle.spec["linux"]["namespaces"] if ns["type"] != "pid"]
    code, out = _run(runtime, cid, bundle, "sh", "-c", "echo $$")
    assert code == 0 and out != "1\n", out
    assert spares.ready[KIND][-1][0] == spare           # the spare was not used


def test_a_spare_waits_in_a_cgroup_of_its_own_that_becomes_its_containers(runtime, spares, cid, bundle, uid):
    from virtkit.container.cgroups import detect_version, manager_for

    parent = f"/virtkit-test-{uid}"
    spares.parents[KIND] = parent               # as after a first container of this kind asked for under it
    pid = _ready(spares)
    made = spares.ready[KIND][-1][2]
    if detect_version() != 1:                   # v2 cannot rename a cgroup: the spare joins its container's
        assert made is None
        return
    assert made.startswith(f"{parent}/.spare-") and pid in manager_for(made).pids()
    bundle.args("sleep", "5").save()
    state = runtime.create(cid, bundle.path, stdio=(0, 1, 2), start=True)
    try:
        assert state["pid"] == pid
        assert pid in manager_for(f"{parent}/{cid}").pids()     # its cgroup, renamed: no mkdir, no move
        assert not manager_for(made).exists()
        assert spares.parents[KIND] == parent
    finally:
        runtime.kill(cid, 9)
        while runtime.state(cid)["status"] != "stopped":
            time.sleep(0.01)
        runtime.delete(cid)
    _ready(spares)                              # the next one waits in a new cgroup of its own
    again = spares.ready[KIND][-1][2]
    assert again.startswith(f"{parent}/.spare-") and again != made
    spares.close()                              # and goes with its spare
    assert not manager_for(again).exists()


def _spare_in_own_cgroup(spares, uid) -> tuple[int, str]:
    from virtkit.container.cgroups import detect_version

    if detect_version() != 1:
        pytest.skip("cgroup v2 cannot rename a cgroup: a spare never waits in one of its own to become its container's")
    spares.parents[KIND] = f"/virtkit-test-{uid}"
    pid = _ready(spares)
    return pid, spares.ready[KIND][-1][2]


def test_a_spares_container_runs_only_once_its_limits_are_in_place(runtime, spares, cid, bundle, uid):
    # its cgroup is renamed and limited while the spare builds the container: the process must not run before
    pid, _made = _spare_in_own_cgroup(spares, uid)
    bundle.spec["linux"]["cgroupsPath"] = f"/virtkit-test-{uid}/{cid}"
    bundle.spec["linux"]["resources"] = {"pids": {"limit": 77}, "memory": {"limit": 64 << 20}}
    code, out = _run(runtime, cid, bundle, "sh", "-c", "cat /sys/fs/cgroup/pids/pids.max "
                     "/sys/fs/cgroup/memory/memory.limit_in_bytes; cat /proc/self/cgroup | grep pids")
    assert code == 0, out
    assert not spares.ready[KIND]                       # it was the spare that ran it
    assert out.split()[:2] == ["77", str(64 << 20)], out
    assert out.split()[2].endswith(":pids:/"), out        # at the root of its cgroup namespace: its own cgroup


def test_a_spare_whose_cgroup_cannot_become_the_containers_leaves_nothing(runtime, spares, cid, bundle, uid,
                                                                          monkeypatch):
    from virtkit.container.cgroups import manager_for
    from virtkit.container.cgroups.v1 import V1Manager

    pid, made = _spare_in_own_cgroup(spares, uid)
    bundle.spec["linux"]["cgroupsPath"] = f"/virtkit-test-{uid}/{cid}"
    monkeypatch.setattr(V1Manager, "adopt", lambda self, made: False)    # as if renamed from under us
    bundle.args("true").save()
    with pytest.raises(SystemFailure, match="cannot rename the spare's cgroup"):
        runtime.create(cid, bundle.path, stdio=(0, 1, 2), start=True)
    assert _gone(pid)                                   # the spare saw its channel close and went
    spares.collect()
    assert not manager_for(f"/virtkit-test-{uid}/{cid}").exists()
    with pytest.raises(NotFound):
        runtime.state(cid)


def test_spare_cgroups_an_earlier_supervisor_left_are_removed(spares, uid):
    from virtkit.container.cgroups import detect_version, manager_for

    if detect_version() != 1:                   # v2: spares have no cgroups of their own, nothing can be left
        return
    parent = f"/virtkit-test-{uid}"
    stale = manager_for(f"{parent}/.spare-0123456789ab")    # as a killed supervisor's spare leaves it
    stale.create()
    spares.parents[KIND] = parent
    _ready(spares)
    spares.close()
    assert not stale.exists()
    assert not manager_for(parent).exists()     # nothing of ours is left in the parent: it went too


def _let_go(spare: list) -> None:
    """A spare taken out of the pool and let go: its channel closes, it exits, and (our child) is reaped."""
    spare[1].close()
    os.waitpid(spare[0], 0)


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_spares_are_their_keepers_children_made_by_its_maker(spares):
    """The maker forks each spare as its keeper's child (clone with CLONE_PARENT): the keeper reaps it."""
    pid = _ready(spares)
    maker = spares.maker.pid
    assert _parent_of(pid) == os.getpid() and _parent_of(maker) == os.getpid() and pid != maker
    for p, name in ((maker, "vk-spare-maker"), (pid, "vk-spare")):     # as ps shows them
        with open(f"/proc/{p}/comm") as f:
            assert f.read() == name + "\n"
    assert _ready(spares, KIND & ~sc.CLONE_NEWIPC) != pid  # another kind
    assert spares.maker.pid == maker            # one maker for every spare
    spares.close()
    assert _gone(pid) and _gone(maker)


def test_a_maker_that_died_is_made_again(spares):
    _ready(spares)
    maker = spares.maker.pid
    os.kill(maker, 9)
    os.waitpid(maker, 0)
    assert spares.forget(maker) is False and spares.maker is None
    _let_go(spares.ready[KIND].pop())               # its spare used up, the next comes from a new maker
    pid = _ready(spares)
    assert spares.maker.pid != maker and _parent_of(pid) == os.getpid()


def test_a_maker_dead_before_it_is_reaped_is_replaced_not_given_up(spares):
    """The maker died and its keeper has not reaped it yet: asking it fails, and the next fill makes another
    (the kind is still wanted), rather than this kind of container going without spares from then on."""
    _ready(spares)
    maker = spares.maker.pid
    os.kill(maker, 9)
    assert _gone(maker)
    _let_go(spares.ready[KIND].pop())
    spares.fill()                                   # asks the dead one: it finds out
    assert spares.maker is None and KIND in spares.wanted
    os.waitpid(maker, 0)
    assert spares.forget(maker) is False            # reaped later: nothing left to do
    pid = _ready(spares)
    assert spares.maker.pid != maker and _parent_of(pid) == os.getpid()


def test_a_spare_still_being_made_is_not_waited_for_nor_lost(spares):
    """Asked of the maker but not answered yet when a container comes: take says none at once (that container
    starts the usual way), and the spare, once made, serves the next one without being asked for again."""
    import signal

    first = _ready(spares)
    _let_go(spares.ready[KIND].pop())               # used up; the maker is there, and now held still
    os.kill(spares.maker.pid, signal.SIGSTOP)
    try:
        spares.fill()
        asks = spares._asks
        assert len(spares.asked) == 1
        assert spares.take(KIND) is None            # not waited for
        assert len(spares.asked) == 1               # nor given up
    finally:
        os.kill(spares.maker.pid, signal.SIGCONT)
    pid = _ready(spares)
    assert spares._asks == asks and pid != first and _parent_of(pid) == os.getpid()


def test_a_mount_unlike_the_premade_one_is_mounted_as_written(runtime, spares, cid, bundle):
    shm = next(m for m in bundle.spec["mounts"] if m["destination"] == "/dev/shm")
    shm["options"] = [o if not o.startswith("size=") else "size=1m" for o in shm["options"]]
    _ready(spares)
    code, out = _run(runtime, cid, bundle, "sh", "-c", "grep -E ' /dev/(shm|pts) ' /proc/self/mountinfo")
    assert code == 0, out
    assert not spares.ready[KIND]                       # it was the spare that ran it
    shm_line, = [ln for ln in out.splitlines() if " /dev/shm " in ln]
    assert shm_line.endswith(" - tmpfs shm rw,size=1024k"), out        # its own size, not the premade 64 MiB
    assert " /dev/pts " in out                          # the premade mounts that match are still there


def test_a_spare_joining_a_network_namespace_sees_that_namespace_in_sys(runtime, spares, cid, bundle, uid):
    netns = f"vk-spare-{uid}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", "vkjoined0", "type", "veth", "peer", "name", "vkjoined1"],
                       check=True)
        bundle.spec["linux"]["namespaces"] = [
            {"type": "network", "path": f"/run/netns/{netns}"} if ns["type"] == "network" else ns
            for ns in bundle.spec["linux"]["namespaces"]]
        kind = KIND & ~sc.CLONE_NEWNET                  # a spare waits in no network namespace of its own
        _ready(spares, kind)
        code, out = _run(runtime, cid, bundle, "ls", "/sys/class/net")
        assert (code, out.split()) == (0, ["lo", "vkjoined0", "vkjoined1"]), out
        assert not spares.ready[kind]                   # it was the spare that ran it
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=True)


def test_a_spare_in_its_own_cgroup_gives_a_container_without_a_cgroup_namespace_the_hosts(runtime, spares, cid,
                                                                                          bundle, uid):
    # the spare made its cgroup namespace early; a container that asks for none gets the host's back
    _spare_in_own_cgroup(spares, uid)
    bundle.spec["linux"]["cgroupsPath"] = f"/virtkit-test-{uid}/{cid}"
    bundle.spec["linux"]["namespaces"] = [ns for ns in bundle.spec["linux"]["namespaces"] if ns["type"] != "cgroup"]
    code, out = _run(runtime, cid, bundle, "sh", "-c",
                     "grep pids /proc/self/cgroup; grep ' /sys/fs/cgroup/pids ' /proc/self/mountinfo")
    assert code == 0, out
    assert not spares.ready[KIND]                       # it was the spare that ran it
    cgroup, mount = out.splitlines()
    assert cgroup.endswith(f":pids:/virtkit-test-{uid}/{cid}"), out     # the host's view of its cgroup
    assert mount.split()[3] == f"/virtkit-test-{uid}/{cid}", out         # its /sys/fs/cgroup, as the host sees it


def test_a_spare_whose_cgroup_is_not_adopted_leaves_its_early_cgroup_view_behind(runtime, spares, cid, bundle, uid):
    # the container's cgroup exists already: the spare joins it rather than being renamed to it, so what it made
    # in its own cgroup's namespace (the namespace, /sys/fs/cgroup) is not the container's
    from virtkit.container.cgroups import manager_for

    _spare_in_own_cgroup(spares, uid)
    path = f"/virtkit-test-{uid}/{cid}"
    bundle.spec["linux"]["cgroupsPath"] = path
    manager_for(path).create()
    code, out = _run(runtime, cid, bundle, "sh", "-c",
                     "grep pids /proc/self/cgroup; cat /sys/fs/cgroup/pids/cgroup.procs")
    assert code == 0, out
    assert not spares.ready[KIND]                       # it was the spare that ran it
    lines = out.split()
    assert lines[0].endswith(":pids:/"), out            # its cgroup namespace is rooted at the container's cgroup
    assert "1" in lines[1:], out                        # and its /sys/fs/cgroup shows that cgroup, with it in it
