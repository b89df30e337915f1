"""CPU sharing in cgroups: write_controls, OCI linux.resources.unified, and a VM's cgroup (virtkit.vm.cgroup) — on
fixture trees anywhere, and for real on this host's cgroups as root."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest

from tests.container.test_cgroups import _fixture_v2, _v2
from virtkit.config import Home
from virtkit.container.cgroups import detect_version, manager_for
from virtkit.core.errors import InvalidArgument, Unsupported
from virtkit.sched.cpushare import CpuRequest, plan
from virtkit.vm.cgroup import VmCgroup
from virtkit.vm.qemu import waiter

LEAF = ("virtkit-test", "web")
TWO = frozenset({0, 1})


def _leaf(root: str) -> Path:
    return Path(root, *LEAF)


def test_v2_write_controls(tmp_path):
    root = _fixture_v2(tmp_path)
    mgr, _ = _v2(root)
    mgr.write_controls(plan(CpuRequest(weight=250, cap=0.25, cpuset="1"), TWO).controls(2))
    leaf = _leaf(root)
    assert (leaf / "cpu.weight").read_text() == "250"
    assert (leaf / "cpu.max").read_text() == "25000 100000"
    assert (leaf / "cpuset.cpus").read_text() == "1"


def test_write_controls_checks_every_file_before_writing(tmp_path):
    root = _fixture_v2(tmp_path, "cpu memory pids")          # no cpuset controller
    mgr, _ = _v2(root)
    with pytest.raises(Unsupported, match="cpuset_cpus: the cgroup v2 'cpuset' controller is not available"):
        mgr.write_controls(plan(CpuRequest(weight=250, cpuset="1"), TWO).controls(2))
    assert (_leaf(root) / "cpu.weight").read_text() == "100"


def test_v2_unified_is_written_as_given_and_wins(tmp_path):
    root = _fixture_v2(tmp_path)
    mgr, _ = _v2(root)
    # the OCI shares would become crun's converted weight; unified (what the container driver sends) is exact
    mgr.apply({"cpu": {"shares": 2048}, "unified": {"cpu.weight": "200"}})
    assert (_leaf(root) / "cpu.weight").read_text() == "200"


@pytest.mark.parametrize("unified, message", [
    ({"cgroup.procs": "1"}, "not a cgroup v2 controller file name"),
    ({"../x.y": "1"}, "not a cgroup v2 controller file name"),
    ({"cpu.weight": 200}, "linux.resources.unified.cpu.weight: must be a string"),
    (["cpu.weight"], "linux.resources.unified: must be an object"),
])
def test_v2_unified_bad_input(tmp_path, unified, message):
    root = _fixture_v2(tmp_path)
    mgr, _ = _v2(root)
    with pytest.raises(InvalidArgument, match=message):
        mgr.apply({"unified": unified})


def test_v2_unified_names_a_missing_controller(tmp_path):
    root = _fixture_v2(tmp_path, "cpu pids")
    mgr, _ = _v2(root)
    with pytest.raises(Unsupported, match="memory"):
        mgr.apply({"unified": {"memory.high": "1000000"}})


def test_v1_refuses_unified(tmp_path):
    mgr = manager_for("/virtkit-test/c", root=str(tmp_path), version=1)
    with pytest.raises(Unsupported, match="linux.resources.unified: is for cgroup v2 hosts only"):
        mgr.apply({"unified": {"cpu.weight": "200"}})


def _vm_fixture_v2(tmp_path: Path, home: Home, instance_id: str) -> str:
    """A cgroup2 root with the VM's leaf, populated as the kernel would."""
    root = tmp_path / "cg2"
    leaf = root / home.cgroup_parent.strip("/") / instance_id
    leaf.mkdir(parents=True)
    for d in (root, leaf.parent):
        (d / "cgroup.controllers").write_text("cpuset cpu memory pids\n")
        (d / "cgroup.subtree_control").write_text("")
    for name, text in {"cgroup.procs": "", "cpu.weight": "100", "cpu.max": "max 100000", "cpuset.cpus": "",
                       "cpu.stat": "usage_usec 0\n"}.items():
        (leaf / name).write_text(text)
    return str(root)


def test_vm_cgroup_v2_on_a_fixture(tmp_path):
    home = Home(str(tmp_path / "home"))
    root = _vm_fixture_v2(tmp_path, home, "abc")
    cg = VmCgroup(home, "abc", root=root, version=2)
    cg.create(plan(CpuRequest(weight=300, cap=0.5, cpuset="0"), TWO))
    leaf = Path(root) / home.cgroup_parent.strip("/") / "abc"
    assert (leaf / "cpu.weight").read_text() == "300"
    assert (leaf / "cpu.max").read_text() == "50000 100000"
    assert (leaf / "cpuset.cpus").read_text() == "0"
    assert cg.dirs() == [str(leaf)]
    assert cg.join_files() == [str(leaf / "cgroup.procs")]
    cg.update(plan(CpuRequest(), TWO, reset=True))
    assert (leaf / "cpu.weight").read_text() == "100" and (leaf / "cpu.max").read_text() == "max 100000"
    assert (leaf / "cpuset.cpus").read_text() == "0-1"


def test_vm_cgroup_v1_uses_only_the_cpu_hierarchies(tmp_path):
    root = tmp_path / "cgv1"
    for ctrl in ("cpu", "cpuacct", "cpuset", "memory", "pids", "devices", "freezer"):
        (root / ctrl).mkdir(parents=True)
    home = Home(str(tmp_path / "home"))
    cg = VmCgroup(home, "abc", root=str(root), version=1)
    tail = f"{home.cgroup_parent}/abc"
    assert cg.dirs() == sorted(f"{root}/{c}{tail}" for c in ("cpu", "cpuacct", "cpuset"))
    # a VM's process is one thread when it joins: moving a thread skips cgroup.procs' thread-group lock
    assert all(f.endswith("/tasks") for f in cg.join_files())


# -- real cgroups (root) --------------------------------------------------------------------------------------------
@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create cgroups")
def test_vm_cgroup_for_real(tmp_path):
    """What start does: cgroup made with the settings, the child joins before exec, the waiter removes it."""
    if detect_version() != 1:
        pytest.skip("the v2 path is covered on a fixture tree; this host's cgroup2 tree has no cpu controller")
    home = Home(str(tmp_path / f"vkhome-{uuid.uuid4().hex[:6]}"))
    cg = VmCgroup(home, uuid.uuid4().hex)
    cg.create(plan(CpuRequest(weight=50, cap=0.3, cpuset="0"), None))
    pid = 0
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                waiter._join_cgroups(cg.join_files())
                os.write(w, b"x")
                os.execv("/bin/sleep", ["sleep", "30"])
            finally:
                os._exit(127)
        os.close(w)
        assert os.read(r, 1) == b"x"
        os.close(r)
        assert cg.pids() == [pid]
        with open(f"/proc/{pid}/status") as f:
            assert "Cpus_allowed_list:\t0\n" in f.read()
        cpu_dir = next(d for d in cg.dirs() if "/cpu/" in d)
        assert Path(cpu_dir, "cpu.shares").read_text().strip() == "512"
        assert Path(cpu_dir, "cpu.cfs_quota_us").read_text().strip() == "30000"
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        waiter._remove_cgroups(cg.dirs())
        assert not any(os.path.exists(d) for d in cg.dirs())
        cg.remove()
    parents = {os.path.dirname(d) for d in cg.dirs()}
    assert not any(os.path.exists(p) for p in parents), "the home's parent cgroup is removed with its last VM"
