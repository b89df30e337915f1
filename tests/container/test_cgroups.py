"""cgroups: validation and v2 logic on fixture trees (anywhere), v1 and v2 for real (root)."""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

import pytest

from virtkit.container.cgroups import detect_version, manager_for
from virtkit.container.cgroups.resources import cpu_max, shares_to_weight, validate_resources
from virtkit.core.errors import InvalidArgument, SystemFailure, Unsupported


def _fixture_v2(tmp_path, controllers: str = "cpuset cpu io memory pids") -> str:
    """A cgroup2 root plus the leaf /virtkit-test/web as the kernel would populate them."""
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text(controllers + "\n")
    (root / "cgroup.subtree_control").write_text("")
    parent = root / "virtkit-test"
    parent.mkdir()
    (parent / "cgroup.controllers").write_text(controllers + "\n")
    (parent / "cgroup.subtree_control").write_text("")
    leaf = parent / "web"
    leaf.mkdir()
    files = {"cgroup.procs": "", "cgroup.freeze": "0", "cgroup.events": "populated 0\nfrozen 0\n",
             "cpu.stat": "usage_usec 1500\nuser_usec 1000\n"}
    if "cpu" in controllers:
        files.update({"cpu.weight": "100", "cpu.max": "max 100000"})
    if "memory" in controllers:
        files.update({"memory.max": "max", "memory.swap.max": "max", "memory.low": "0",
                      "memory.current": "4096", "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n"})
    if "pids" in controllers:
        files.update({"pids.max": "max", "pids.current": "2"})
    if "cpuset" in controllers:
        files.update({"cpuset.cpus": "", "cpuset.mems": ""})
    for name, text in files.items():
        (leaf / name).write_text(text)
    return str(root)


def _v2(root: str):
    mgr = manager_for("/virtkit-test/web", root=root)
    devices: list = []
    mgr._attach_devices = devices.append  # type: ignore[attr-defined]
    return mgr, devices


# --- pure logic ---

@pytest.mark.parametrize("resources, field", [
    ({"memory": {"limit": -5}}, "linux.resources.memory.limit: must be >= 4096 bytes"),
    ({"memory": {"limit": 100}}, "linux.resources.memory.limit"),
    ({"memory": {"limit": 1 << 20, "swap": 1 << 19}}, "linux.resources.memory.swap"),
    ({"cpu": {"quota": 0}}, "linux.resources.cpu.quota"),
    ({"cpu": {"period": 999}}, "linux.resources.cpu.period"),
    ({"cpu": {"period": 1_000_001}}, "linux.resources.cpu.period"),
    ({"cpu": {"shares": 1}}, "linux.resources.cpu.shares"),
    ({"cpu": {"shares": 300000}}, "linux.resources.cpu.shares"),
    ({"cpu": {"cpus": "0-x"}}, "linux.resources.cpu.cpus"),
    ({"cpu": {"cpus": "3-1"}}, "linux.resources.cpu.cpus"),
    ({"pids": {"limit": 0}}, "linux.resources.pids.limit"),
    ({"pids": {"limit": "10"}}, "linux.resources.pids.limit"),
    ({"blockIO": {"weight": 5}}, "linux.resources.blockIO.weight"),
    ({"devices": [{"allow": True, "access": "rwx"}]}, "linux.resources.devices[0].access"),
    ({"devices": [{"allow": "yes"}]}, "linux.resources.devices[0].allow"),
    ({"memory": {"swappiness": 101}}, "linux.resources.memory.swappiness: must be 0..100 (got 101)"),
    ({"memory": {"swappiness": -2}}, "linux.resources.memory.swappiness"),
    ({"memory": {"swappiness": "60"}}, "linux.resources.memory.swappiness: must be an integer"),
    ({"memory": {"disableOOMKiller": "yes"}}, "linux.resources.memory.disableOOMKiller: must be true or false"),
])
def test_validation_names_the_field(resources, field):
    with pytest.raises(InvalidArgument) as info:
        validate_resources(resources)
    assert field in info.value.message


def test_validation_accepts_unlimited_values():
    plan = validate_resources({"memory": {"limit": -1, "swap": -1}, "pids": {"limit": -1},
                               "cpu": {"quota": -1, "cpus": "0-1,3"}})
    assert plan.memory_limit == -1 and plan.pids_limit == -1 and plan.cpus == "0-1,3"


def test_shares_to_weight_maps_ends_and_default():
    assert shares_to_weight(2) == 1
    assert shares_to_weight(1024) == 100
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(512) < 100 < shares_to_weight(2048)


def test_cpu_max_line():
    assert cpu_max(50000, 100000) == "50000 100000"
    assert cpu_max(50000, None) == "50000 100000"
    assert cpu_max(-1, 20000) == "max 20000"
    assert cpu_max(None, None) is None


@pytest.mark.parametrize("path", ["/a/../b", "..", "/", "", "x/../../etc"])
def test_rejects_bad_paths(path):
    with pytest.raises(InvalidArgument):
        manager_for(path, root="/nonexistent", version=1)


def test_relative_path_counts_from_root(tmp_path):
    mgr = manager_for("virtkit-a/b", root=_fixture_v2(tmp_path))
    assert mgr.path == "/virtkit-a/b"
    assert mgr.v1_paths() == {"": str(tmp_path / "cg2" / "virtkit-a" / "b")}


def test_detect_version(tmp_path):
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    assert detect_version(str(v1)) == 1
    assert detect_version(_fixture_v2(tmp_path)) == 2


# --- v2 on a fixture tree ---

def test_v2_create_enables_controllers_in_ancestors(tmp_path):
    root = _fixture_v2(tmp_path, "cpu memory pids hugetlb")
    mgr, _ = _v2(root)
    mgr.create()
    for d in (root, os.path.join(root, "virtkit-test")):
        with open(os.path.join(d, "cgroup.subtree_control")) as f:
            # each write is one "+ctrl"; a regular file keeps the last one
            assert f.read().startswith("+")


def test_v2_apply_writes_converted_values(tmp_path):
    root = _fixture_v2(tmp_path)
    mgr, devices = _v2(root)
    mgr.apply({"cpu": {"shares": 1024, "quota": 50000, "period": 100000, "cpus": "0"},
               "memory": {"limit": 32 << 20, "swap": 64 << 20, "reservation": 16 << 20},
               "pids": {"limit": 32}})
    leaf = os.path.join(root, "virtkit-test", "web")

    def read(name):
        with open(os.path.join(leaf, name)) as f:
            return f.read()
    assert read("cpu.weight") == "100"
    assert read("cpu.max") == "50000 100000"
    assert read("cpuset.cpus") == "0"
    assert read("memory.max") == str(32 << 20)
    assert read("memory.swap.max") == str(32 << 20)  # OCI swap is memory+swap
    assert read("memory.low") == str(16 << 20)
    assert read("pids.max") == "32"
    # deny-all first, then the defaults (null is allowed)
    assert devices[0][0]["allow"] is False and devices[0][0]["type"] == "a"
    assert any(r["major"] == 1 and r["minor"] == 3 and r["allow"] for r in devices[0])


def test_v2_bad_input_writes_nothing(tmp_path):
    root = _fixture_v2(tmp_path)
    mgr, devices = _v2(root)
    with pytest.raises(InvalidArgument):
        mgr.apply({"pids": {"limit": 32}, "memory": {"limit": -5}})
    with open(os.path.join(root, "virtkit-test", "web", "pids.max")) as f:
        assert f.read() == "max"
    assert devices == []


def test_v2_missing_controller_is_unsupported(tmp_path):
    root = _fixture_v2(tmp_path, "cpu pids")
    mgr, _ = _v2(root)
    with pytest.raises(Unsupported, match="memory"):
        mgr.apply({"pids": {"limit": 5}, "memory": {"limit": 1 << 20}})
    with open(os.path.join(root, "virtkit-test", "web", "pids.max")) as f:
        assert f.read() == "max"


def test_swappiness_minus_one_means_the_default():
    plan = validate_resources({"memory": {"swappiness": -1, "disableOOMKiller": False}})
    assert plan.memory_swappiness is None and plan.disable_oom_killer is False
    plan = validate_resources({"memory": {"swappiness": 0, "disableOOMKiller": True}})
    assert plan.memory_swappiness == 0 and plan.disable_oom_killer is True


@pytest.mark.parametrize("memory, field", [
    ({"swappiness": 10}, "linux.resources.memory.swappiness: cgroup v2 has no per-cgroup swappiness"),
    ({"disableOOMKiller": True}, "linux.resources.memory.disableOOMKiller: cgroup v2 cannot disable the OOM killer"),
])
def test_v2_refuses_v1_only_memory_settings_and_writes_nothing(tmp_path, memory, field):
    root = _fixture_v2(tmp_path)
    mgr, devices = _v2(root)
    with pytest.raises(Unsupported) as info:
        mgr.apply({"pids": {"limit": 32}, "memory": {"limit": 32 << 20, **memory}})
    assert field in info.value.message
    leaf = os.path.join(root, "virtkit-test", "web")
    for name, unchanged in (("pids.max", "max"), ("memory.max", "max")):
        with open(os.path.join(leaf, name)) as f:
            assert f.read() == unchanged
    assert devices == []


def test_v2_accepts_the_defaults_of_v1_only_settings(tmp_path):
    root = _fixture_v2(tmp_path)
    mgr, _ = _v2(root)
    mgr.apply({"memory": {"limit": 32 << 20, "swappiness": -1, "disableOOMKiller": False}})
    with open(os.path.join(root, "virtkit-test", "web", "memory.max")) as f:
        assert f.read() == str(32 << 20)


def test_v2_stats_from_files(tmp_path):
    mgr, _ = _v2(_fixture_v2(tmp_path))
    stats = mgr.stats()
    assert stats == {"cpu_usage_ns": 1_500_000, "memory_bytes": 4096, "memory_limit": None,
                     "pids_current": 2, "pids_limit": None, "oom_kills": 1}
    assert mgr.oom_killed() is True
    (tmp_path / "nomem").mkdir()
    no_memory, _ = _v2(_fixture_v2(tmp_path / "nomem", controllers="cpu pids"))
    assert no_memory.oom_killed() is False          # no memory controller: nothing was OOM-killed


# --- real cgroups (root) ---

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")


def _cleanup(mgr) -> None:
    if mgr.exists():
        with contextlib.suppress(SystemFailure, Unsupported):
            mgr.thaw()
        mgr.kill_all(signal.SIGKILL)
        mgr.destroy(timeout=10)


@pytest.fixture
def v1_cgroup():
    if detect_version() != 1:
        pytest.skip("host is not cgroup v1")
    mgr = manager_for(f"/virtkit-test-{uuid.uuid4().hex[:10]}/c", version=1)
    mgr.create()
    yield mgr
    _cleanup(mgr)
    assert not os.path.exists(os.path.dirname(mgr.v1_paths()["pids"]))


@pytest.fixture
def v2_cgroup():
    root = "/sys/fs/cgroup" if detect_version() == 2 else "/sys/fs/cgroup/unified"
    if not os.path.exists(os.path.join(root, "cgroup.procs")):
        pytest.skip("no cgroup2 tree on this host")
    mgr = manager_for(f"/virtkit-test-{uuid.uuid4().hex[:10]}/c", root=root, version=2)
    mgr.create()
    yield mgr
    _cleanup(mgr)
    assert not os.path.exists(os.path.dirname(mgr.v1_paths()[""]))


def _spawn(mgr, code: str) -> int:
    """Fork a child that waits until it is in the cgroup, then execs python running `code`."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)
            os.execv("/usr/bin/python3", ["python3", "-c", code])
        finally:
            os._exit(127)
    os.close(r)
    mgr.add_pid(pid)
    os.write(w, b"x")
    os.close(w)
    return pid


@pytest.mark.root
@needs_root
def test_v1_lifecycle(v1_cgroup):
    mgr = v1_cgroup
    mgr.apply({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}})
    pid = _spawn(mgr, "import time; time.sleep(30)")
    assert pid in mgr.pids()
    with open(f"/proc/{pid}/cgroup") as f:
        assert mgr.path in f.read()
    mgr.freeze()
    assert mgr.is_frozen()
    mgr.thaw()
    assert not mgr.is_frozen()
    stats = mgr.stats()
    assert stats["memory_limit"] == 64 << 20 and stats["pids_limit"] == 50 and stats["pids_current"] == 1
    mgr.kill_all(signal.SIGKILL)
    os.waitpid(pid, 0)
    mgr.destroy()
    assert not mgr.exists()


@pytest.mark.root
@needs_root
@pytest.mark.parametrize("when", ["before_freeze", "while_frozen"])
def test_v1_kill_all_of_a_cgroup_its_owner_removes_meanwhile(v1_cgroup, when):
    """The supervisor removes a container's cgroup once its last process exits; a force-remove killing it at that
    moment finds the cgroup gone between its own freeze and thaw, and that is a kill done, not an error."""
    pid = _spawn(v1_cgroup, "import time; time.sleep(30)")
    freeze = v1_cgroup.freeze

    def exit_and_owner_removes(timeout: float = 5.0) -> None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        assert v1_cgroup.wait_empty(5.0)
        if when == "while_frozen":
            freeze(timeout)
        assert v1_cgroup.remove_if_empty() is True

    v1_cgroup.freeze = exit_and_owner_removes      # type: ignore[method-assign]
    v1_cgroup.kill_all(signal.SIGKILL)
    assert not v1_cgroup.exists()


@pytest.mark.root
@needs_root
def test_v1_destroy_refuses_while_busy(v1_cgroup):
    from virtkit.core.errors import InvalidState
    pid = _spawn(v1_cgroup, "import time; time.sleep(30)")
    with pytest.raises(InvalidState, match="still has processes"):
        v1_cgroup.destroy(timeout=0.2)
    v1_cgroup.kill_all(signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.root
@needs_root
@pytest.mark.parametrize("which", ["v1", "v2"])
def test_remove_if_empty_leaves_a_busy_cgroup_whole(which, request):
    mgr = request.getfixturevalue(f"{which}_cgroup")
    pid = _spawn(mgr, "import time; time.sleep(30)")
    assert mgr.remove_if_empty() is False
    assert all(os.path.isdir(d) for d in mgr.v1_paths().values())     # nothing removed from any hierarchy
    assert pid in mgr.pids()
    mgr.kill_all(signal.SIGKILL)
    os.waitpid(pid, 0)
    assert mgr.remove_if_empty() is True
    assert not mgr.exists()


@pytest.mark.root
@needs_root
@pytest.mark.slow
def test_v1_cpu_quota_limits_usage(v1_cgroup):
    import time
    v1_cgroup.apply({"cpu": {"quota": 20000, "period": 100000}})
    before = v1_cgroup.stats()["cpu_usage_ns"]
    start = time.monotonic()
    pid = _spawn(v1_cgroup, "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass")
    os.waitpid(pid, 0)
    elapsed = time.monotonic() - start
    share = (v1_cgroup.stats()["cpu_usage_ns"] - before) / 1e9 / elapsed
    assert 0.10 <= share <= 0.30, share


@pytest.mark.root
@needs_root
def test_v1_pids_limit_stops_fork_bomb(v1_cgroup):
    v1_cgroup.apply({"pids": {"limit": 32}})
    code = (
        "import os, errno, sys, time\n"
        "n = 0\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60); os._exit(0)\n"
        "        n += 1\n"
        "    except OSError as e:\n"
        "        sys.exit(0 if e.errno == errno.EAGAIN and n == 31 else 1)\n"
    )
    pid = _spawn(v1_cgroup, code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert v1_cgroup.stats()["pids_current"] == 31  # the orphans stay in the cgroup
    v1_cgroup.kill_all(signal.SIGKILL)
    assert v1_cgroup.wait_empty(5)


@pytest.mark.root
@needs_root
def test_v1_memory_limit_oom_kills(v1_cgroup):
    v1_cgroup.apply({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    assert not v1_cgroup.oom_killed()
    pid = _spawn(v1_cgroup, "b = bytearray(100 << 20)")
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert v1_cgroup.oom_killed()
    assert v1_cgroup.stats()["oom_kills"] >= 1


@pytest.mark.root
@needs_root
def test_v1_swappiness_and_disabled_oom_killer(v1_cgroup):
    """With the OOM killer off, a process over the limit waits for memory instead of being killed."""
    import time
    v1_cgroup.apply({"memory": {"limit": 32 << 20, "swap": 32 << 20, "swappiness": 7, "disableOOMKiller": True}})
    memdir = v1_cgroup.v1_paths()["memory"]
    with open(os.path.join(memdir, "memory.swappiness")) as f:
        assert f.read().strip() == "7"
    control = os.path.join(memdir, "memory.oom_control")
    from virtkit.container.cgroups.base import read_keyed
    assert read_keyed(control)["oom_kill_disable"] == 1
    pid = _spawn(v1_cgroup, "b = bytearray(100 << 20)")
    deadline = time.monotonic() + 30
    while read_keyed(control).get("under_oom") != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert read_keyed(control)["under_oom"] == 1          # stuck at the limit...
    assert os.waitpid(pid, os.WNOHANG) == (0, 0)          # ...but alive
    assert not v1_cgroup.oom_killed()
    v1_cgroup.kill_all(signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.root
@needs_root
def test_v1_devices_default_deny(v1_cgroup):
    v1_cgroup.apply(None)
    with open(os.path.join(v1_cgroup.v1_paths()["devices"], "devices.list")) as f:
        listed = f.read().split("\n")
    assert "c 1:3 rwm" in listed and "a *:* rwm" not in listed
    code = ("import os, sys\nos.close(os.open('/dev/null', os.O_RDONLY))\n"
            "try:\n    os.open('/dev/loop-control', os.O_RDONLY)\nexcept PermissionError:\n    sys.exit(0)\n"
            "sys.exit(1)")
    pid = _spawn(v1_cgroup, code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


@pytest.mark.root
@needs_root
def test_v2_real_freeze_kill_and_devices(v2_cgroup):
    from virtkit.container import devices
    mgr = v2_cgroup
    mgr.apply(None)  # the controllers may be held by v1 on a hybrid host; devices need none
    mgr.apply({"devices": [{"allow": True, "type": "c", "major": 10, "minor": 237, "access": "r"}]})
    assert devices.attached_count(mgr.v1_paths()[""]) == 1  # replaced, not stacked
    code = ("import os, sys, time\nos.close(os.open('/dev/null', os.O_RDONLY))\n"
            "os.close(os.open('/dev/loop-control', os.O_RDONLY))\n"
            "try:\n    os.open('/dev/loop-control', os.O_RDWR)\nexcept PermissionError:\n    time.sleep(30)\n"
            "sys.exit(1)")
    pid = _spawn(mgr, code)
    import time
    time.sleep(0.3)
    assert mgr.pids() == [pid]
    mgr.freeze()
    assert mgr.is_frozen()
    mgr.thaw()
    assert not mgr.is_frozen()
    mgr.kill_all(signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)  # it reached the sleep: the rules held, then cgroup.kill hit
    mgr.destroy()
    assert not mgr.exists()
