"""CPU sharing on the host, through the CLI: weights share a contended CPU, caps hold, pinning pins; for containers,
QEMU VMs and native-engine VMs; `virtkit update` changes them live; bad input leaves nothing.

This host has 2 cores and other work on them: shares are measured between two instances of ours (both suffer the
same noise) and checked within loose bands.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import vk
from virtkit.config import Home
from virtkit.container.cgroups import detect_version
from virtkit.container.cgroups.base import read_keyed

pytestmark = pytest.mark.root
SPIN = ["sh", "-c", "while :; do :; done"]
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs qemu-system-x86_64")
needs_kvm = pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm (the native engine)")


def _cgdir(home: str, inst: dict, ctrl: str) -> str:
    """The instance's cgroup directory for controller `ctrl` (v1), or its one directory (v2)."""
    tail = f"{Home.from_env(home).cgroup_parent}/{inst['id']}"
    return f"/sys/fs/cgroup{tail}" if detect_version() == 2 else f"/sys/fs/cgroup/{ctrl}{tail}"


def _read(home: str, inst: dict, ctrl: str, name: str) -> str:
    with open(os.path.join(_cgdir(home, inst, ctrl), name)) as f:
        return f.read().strip()


def _usage_ns(home: str, inst: dict) -> int:
    if detect_version() == 2:
        return read_keyed(os.path.join(_cgdir(home, inst, "cpu"), "cpu.stat"))["usage_usec"] * 1000
    return int(_read(home, inst, "cpuacct", "cpuacct.usage"))


def _shares_over(home: str, insts: list[dict], seconds: float) -> list[float]:
    """Each instance's CPU time over `seconds` of wall time, in CPUs."""
    before = [_usage_ns(home, i) for i in insts]
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return [(_usage_ns(home, i) - b) / 1e9 / elapsed for i, b in zip(insts, before, strict=True)]


def _inspect(home: str, name: str) -> dict:
    r = vk(home, "inspect", name)
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def _allowed(pid: int) -> set[str]:
    """Cpus_allowed_list of every thread of `pid` (one that ends between the listing and the read runs nowhere)."""
    out = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                out.add(f.read().split("Cpus_allowed_list:")[1].split()[0])
        except FileNotFoundError:
            continue
    return out


def _processors(pid: int, samples: int = 20) -> set[int]:
    """The CPU the process last ran on (field 39 of /proc/PID/stat), sampled."""
    seen = set()
    for _ in range(samples):
        with open(f"/proc/{pid}/stat") as f:
            seen.add(int(f.read().rsplit(")", 1)[1].split()[36]))
        time.sleep(0.02)
    return seen


def _home_cgroups(home: str) -> list[str]:
    parent = Home.from_env(home).cgroup_parent.strip("/")
    found = []
    for base in ("/sys/fs/cgroup", *(f"/sys/fs/cgroup/{c}" for c in ("cpu", "cpuacct", "cpuset"))):
        d = os.path.join(base, parent)
        if os.path.isdir(d):
            found += [os.path.join(d, e) for e in os.listdir(d) if os.path.isdir(os.path.join(d, e))]
    return found


# -- containers ---------------------------------------------------------------------------------------------------
def test_weights_2_to_1_on_one_pinned_cpu_get_2_to_1(vk_home, client, name):
    for suffix, weight in (("-hi", "200"), ("-lo", "100")):
        r = vk(vk_home, "run", "-d", "--name", name + suffix, "--cpu-weight", weight, "--cpuset-cpus", "1",
               "busybox", "--", *SPIN)
        assert r.returncode == 0, r.stderr
    try:
        hi, lo = _inspect(vk_home, name + "-hi"), _inspect(vk_home, name + "-lo")
        if detect_version() == 1:
            assert (_read(vk_home, hi, "cpu", "cpu.shares"), _read(vk_home, lo, "cpu", "cpu.shares")) == ("2048",
                                                                                                          "1024")
        else:
            assert (_read(vk_home, hi, "cpu", "cpu.weight"), _read(vk_home, lo, "cpu", "cpu.weight")) == ("200", "100")
        time.sleep(0.5)
        a, b = _shares_over(vk_home, [hi, lo], 4.0)
        assert b > 0.02, (a, b)
        assert 1.5 <= a / b <= 2.7, f"weights 200:100 on one CPU got {a:.2f}:{b:.2f} CPUs ({a / b:.2f}:1)"
    finally:
        vk(vk_home, "rm", "-f", name + "-hi", name + "-lo")


def test_a_cap_of_a_quarter_cpu_holds(vk_home, client, name):
    assert vk(vk_home, "run", "-d", "--name", name, "--cpus", "0.25", "busybox", "--", *SPIN).returncode == 0
    try:
        inst = _inspect(vk_home, name)
        time.sleep(0.5)
        (share,) = _shares_over(vk_home, [inst], 3.0)
        assert 0.15 <= share <= 0.35, f"--cpus 0.25 used {share:.2f} CPUs"
    finally:
        vk(vk_home, "rm", "-f", name)


def test_pinning_keeps_the_threads_on_the_cpu(vk_home, client, name):
    assert vk(vk_home, "run", "-d", "--name", name, "--cpuset-cpus", "1", "busybox", "--", *SPIN).returncode == 0
    try:
        inst = _inspect(vk_home, name)
        assert _read(vk_home, inst, "cpuset", "cpuset.cpus") == "1"
        assert _allowed(inst["pid"]) == {"1"}
        assert _processors(inst["pid"]) == {1}
    finally:
        vk(vk_home, "rm", "-f", name)


def test_update_changes_a_running_container_and_its_next_start(vk_home, client, name):
    r = vk(vk_home, "run", "-d", "--name", name, "--cpus", "0.25", "--cpuset-cpus", "1", "busybox", "--", *SPIN)
    assert r.returncode == 0, r.stderr
    try:
        r = vk(vk_home, "update", "--cpu-weight", "300", "--cpus", "0", "--cpuset-cpus", "0", name)
        assert r.returncode == 0, r.stderr
        inst = _inspect(vk_home, name)
        assert inst["spec"]["cpu_weight"] == 300 and "cpus" not in inst["spec"] and inst["spec"]["cpuset_cpus"] == "0"
        assert _read(vk_home, inst, "cpuset", "cpuset.cpus") == "0" and _allowed(inst["pid"]) == {"0"}
        if detect_version() == 1:
            assert _read(vk_home, inst, "cpu", "cpu.shares") == "3072"
            assert _read(vk_home, inst, "cpu", "cpu.cfs_quota_us") == "-1"
        # unpinning and a new cap, then a restart keeps them (the bundle was rewritten too)
        assert vk(vk_home, "update", "--cpuset-cpus", "", "--cpus", "0.5", name).returncode == 0
        assert vk(vk_home, "restart", "-t", "1", name).returncode == 0
        inst = _inspect(vk_home, name)
        online = Path("/sys/devices/system/cpu/online").read_text().strip()
        assert _allowed(inst["pid"]) == {online}
        if detect_version() == 1:
            assert _read(vk_home, inst, "cpu", "cpu.cfs_quota_us") == "50000"
            assert _read(vk_home, inst, "cpu", "cpu.shares") == "3072"
    finally:
        vk(vk_home, "rm", "-f", name)


def test_bad_input_is_exit_2_with_nothing_left(vk_home, client, name):
    before = (vk(vk_home, "list", "--json").stdout, sorted(_home_cgroups(vk_home)))
    cases = [
        (["--cpu-weight", "0"], b"cpu_weight: must be between 1 and 10000"),
        (["--cpu-weight", "10001"], b"cpu_weight: must be between 1 and 10000"),
        (["--cpuset-cpus", "7"], b"cpuset_cpus: CPU 7 not online on this host"),
        (["--cpuset-cpus", "1-0"], b"cpuset_cpus: range '1-0' runs backwards"),
        (["--cpuset-cpus", "one"], b"cpuset_cpus: must be a list of CPUs"),
        (["--cpus", "-1"], b"cpus: must be between 0.01 and 1024"),
    ]
    for vm in ([], ["--vm"]):
        for args, message in cases:
            r = vk(vk_home, "run", *vm, "--name", name, *args, "busybox", "--", "true")
            assert r.returncode == 2 and message in r.stderr, (vm, args, r.stderr)
            assert b"Traceback" not in r.stderr
    assert (vk(vk_home, "list", "--json").stdout, sorted(_home_cgroups(vk_home))) == before
    assert vk(vk_home, "run", "-d", "--name", name, "busybox", "--", "sleep", "30").returncode == 0
    try:
        for args, message in ((["--cpu-weight", "0"], b"cpu_weight: must be between"),
                              (["--cpuset-cpus", "9"], b"CPU 9 not online"), ([], b"update: nothing to change")):
            r = vk(vk_home, "update", *args, name)
            assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
        assert "cpu_weight" not in _inspect(vk_home, name)["spec"]
    finally:
        vk(vk_home, "rm", "-f", name)


# -- VMs: the whole VM process in the VM's cgroup -----------------------------------------------------------------
def _check_vm(vk_home: str, name: str, cpu: str) -> None:
    """The VM `name` (cap 0.25, pinned to `cpu`): its process is in its cgroup, pinned, and held to the cap."""
    inst = _inspect(vk_home, name)
    pid = inst["pid"]
    for ctrl in ("cpu", "cpuacct", "cpuset"):
        assert pid in [int(p) for p in _read(vk_home, inst, ctrl, "cgroup.procs").split()], ctrl
    assert _read(vk_home, inst, "cpuset", "cpuset.cpus") == cpu
    assert _allowed(pid) == {cpu}
    if detect_version() == 1:
        assert _read(vk_home, inst, "cpu", "cpu.cfs_quota_us") == "25000"
    (share,) = _shares_over(vk_home, [inst], 3.0)
    assert 0.15 <= share <= 0.35, f"a VM capped at 0.25 used {share:.2f} CPUs"
    r = vk(vk_home, "stop", "-t", "2", name, timeout=60)
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(_cgdir(vk_home, inst, "cpu")), "a stopped VM keeps no cgroup"
    assert vk(vk_home, "rm", name).returncode == 0
    assert not [d for d in _home_cgroups(vk_home) if inst["id"] in d]


@needs_qemu
def test_qemu_vm_is_capped_and_pinned_in_its_cgroup(vk_home, client, name):
    r = vk(vk_home, "run", "-d", "--vm", "--name", name, "--cpus", "0.25", "--cpuset-cpus", "1", "--cpu-weight",
           "300", "busybox", "--", *SPIN, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        if detect_version() == 1:
            assert _read(vk_home, _inspect(vk_home, name), "cpu", "cpu.shares") == "3072"
        time.sleep(1.0)          # TCG boots the guest meanwhile: busy either way
        _check_vm(vk_home, name, "1")
    finally:
        vk(vk_home, "rm", "-f", name)


@needs_kvm
def test_native_vm_is_capped_and_pinned_in_its_cgroup(vk_home, client, name, tmp_path):
    guest = tmp_path / "spin.bin"
    guest.write_bytes(b"\xeb\xfe")                               # 1: jmp 1b
    r = vk(vk_home, "run", "-d", "--vm", "--engine", "native", "--kernel", str(guest), "--kernel-format", "flat",
           "--name", name, "--cpus", "0.25", "--cpuset-cpus", "0", "busybox")
    assert r.returncode == 0, r.stderr
    try:
        time.sleep(0.5)
        _check_vm(vk_home, name, "0")
    finally:
        vk(vk_home, "rm", "-f", name)


@needs_kvm
def test_update_reaches_a_running_vm(vk_home, client, name, tmp_path):
    guest = tmp_path / "spin.bin"
    guest.write_bytes(b"\xeb\xfe")
    r = vk(vk_home, "run", "-d", "--vm", "--engine", "native", "--kernel", str(guest), "--kernel-format", "flat",
           "--name", name, "busybox")
    assert r.returncode == 0, r.stderr
    try:
        inst = _inspect(vk_home, name)
        assert vk(vk_home, "update", "--cpus", "0.25", "--cpuset-cpus", "1", name).returncode == 0
        assert _allowed(inst["pid"]) == {"1"}
        time.sleep(0.3)
        (share,) = _shares_over(vk_home, [inst], 2.0)
        assert 0.15 <= share <= 0.35, share
    finally:
        vk(vk_home, "rm", "-f", name)
