"""VM disks end to end: the image's files on the VM's disk, ext4 volumes as disks, snapshot/restore, bad input."""

from __future__ import annotations

import json
import os
import re
import shutil
import time

import pytest

from tests.e2e.conftest import vk

pytestmark = pytest.mark.root

TICKS = ("mkdir -p /ticks; i=0; while true; do i=$((i+1)); echo $i > /ticks/$i; sync; "
         "echo \"tick $i count=$(ls /ticks | wc -l)\"; sleep 0.3; done")


@pytest.fixture(autouse=True)
def _needs_qemu() -> None:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("needs qemu-system-x86_64 and qemu-img (scripts/setup.sh installs qemu-system-x86, qemu-utils)")


def _ok(r) -> str:  # type: ignore[no-untyped-def]
    assert r.returncode == 0, (r.stdout, r.stderr)
    return str(r.stdout.decode())


def _vm_dirs(vk_home: str) -> set[str]:
    return set(os.listdir(os.path.join(vk_home, "vms"))) if os.path.isdir(os.path.join(vk_home, "vms")) else set()


def test_a_vm_runs_on_its_images_files_and_the_base_disk_goes_with_the_image(vk_home, client, name):
    image = f"img-{name}"
    _ok(vk(vk_home, "run", "--name", name, "busybox", "--", "sh", "-c", "echo ID=published-for-vm > /etc/os-release"))
    try:
        _ok(vk(vk_home, "publish", name, image))                     # busybox + one layer: a merged base disk
        out = _ok(vk(vk_home, "run", "--vm", "--rm", image, "--", "cat", "/etc/os-release", timeout=120))
        assert out == "ID=published-for-vm\n"
        digest = client.image(image)["digest"].split(":")[1]
        assert os.path.exists(os.path.join(vk_home, "vmdisks", f"{digest}.raw"))
    finally:
        vk(vk_home, "rm", "-f", name)
        vk(vk_home, "image", "rm", image)
    assert not [e for e in os.listdir(os.path.join(vk_home, "vmdisks")) if digest in e]


def test_an_ext4_volume_is_a_disk_of_one_vm_at_a_time(vk_home, client, name):
    vol = f"v{name[-8:]}"
    _ok(vk(vk_home, "volume", "create", vol, "--size", "64M"))
    try:
        _ok(vk(vk_home, "run", "--vm", "--rm", "-v", f"{vol}:/srv/data", "busybox", "--", "sh", "-c",
               "echo written-in-a-vm > /srv/data/f", timeout=120))
        _ok(vk(vk_home, "run", "--vm", "-d", "--name", name, "-v", f"{vol}:/srv/data:ro", "busybox", "--",
               "sleep", "600"))
        r = vk(vk_home, "run", "--rm", "-v", f"{vol}:/d", "busybox", "--", "true")
        assert r.returncode != 0 and f"volume '{vol}' is a disk of VM(s) {name}".encode() in r.stderr, r.stderr
        _ok(vk(vk_home, "rm", "-f", name))
        out = _ok(vk(vk_home, "run", "--rm", "-v", f"{vol}:/d", "busybox", "--", "cat", "/d/f"))
        assert out == "written-in-a-vm\n"
    finally:
        vk(vk_home, "rm", "-f", name)
        vk(vk_home, "volume", "rm", vol)


def test_bad_disk_input_is_refused_with_nothing_left(vk_home, client, name, tmp_path):
    dirvol = f"d{name[-8:]}"
    _ok(vk(vk_home, "volume", "create", dirvol))
    before, vms = vk(vk_home, "list", "--json").stdout, _vm_dirs(vk_home)
    try:
        for args, message in ((["--disk-size", "100M"], b"disk_size: 100M is too small"),
                              (["--disk-size", "huge"], b"disk_size: cannot parse"),
                              (["-v", f"{tmp_path}:/x"], b"host directory is not supported for VMs"),
                              (["-v", f"nosuch{name[-6:]}:/x"], b"does not exist"),
                              (["-v", f"{dirvol}:/x"], b"ext4 volumes only")):
            r = vk(vk_home, "run", "--vm", "--name", name, *args, "busybox", "--", "true", timeout=120)
            assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
            assert b"Traceback" not in r.stderr
        assert vk(vk_home, "list", "--json").stdout == before and _vm_dirs(vk_home) == vms
        assert f"nosuch{name[-6:]}" not in vk(vk_home, "volume", "list").stdout.decode()
    finally:
        vk(vk_home, "volume", "rm", dirvol)


def _ticks(vk_home: str, name: str) -> list[tuple[int, int]]:
    logs = vk(vk_home, "logs", name).stdout
    return [(int(a), int(b)) for a, b in re.findall(rb"tick (\d+) count=(\d+)", logs)]


def _after_restore(ticks: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ticks of the run after the restore: from where the count goes back."""
    for i in range(1, len(ticks)):
        if ticks[i][0] < ticks[i - 1][0]:
            return ticks[i:]
    return []


def _wait(pred, what: str, timeout: float = 90) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_vm_snapshot_then_a_write_then_restore_the_write_is_gone_and_the_guest_runs_on(vk_home, client, name):
    _ok(vk(vk_home, "run", "--vm", "-d", "--name", name, "--memory", "128M", "busybox", "--", "sh", "-c", TICKS))
    iid = client.instance(name)["id"]
    try:
        _wait(lambda: len(_ticks(vk_home, name)) >= 2, "the guest never ticked")
        out = _ok(vk(vk_home, "snapshot", name, "s1"))
        assert out.split()[:2] == [name, "s1"]
        taken = _ticks(vk_home, name)[-1][0]
        _wait(lambda: _ticks(vk_home, name)[-1][0] >= taken + 4, "the guest stopped ticking after the snapshot")

        r = vk(vk_home, "restore", name, "s1")
        assert r.returncode == 1 and b"running" in r.stderr and b"stop it first" in r.stderr
        r = vk(vk_home, "restore", name, "nope")
        assert r.returncode == 1 and b"has no snapshot named 'nope'" in r.stderr
        _ok(vk(vk_home, "stop", name))
        _ok(vk(vk_home, "restore", name, "s1"))
        _ok(vk(vk_home, "start", name))
        assert client.instance(name)["state"] == "running"
        _wait(lambda: len(_after_restore(_ticks(vk_home, name))) >= 2, "the restored guest does not tick")
        ticks = _ticks(vk_home, name)
        restored = _after_restore(ticks)[0]
        # it counts on from the snapshot (no boot), and the files written after the snapshot are gone
        assert restored[0] <= taken + 2 and restored[1] == restored[0], (taken, ticks)
        snaps = json.loads(_ok(vk(vk_home, "snapshot", "list", name, "--json")))
        assert [s["name"] for s in snaps] == ["s1"] and snaps[0]["size"] > 0
    finally:
        vk(vk_home, "rm", "-f", name)
    assert not os.path.exists(os.path.join(vk_home, "vms", iid))
    assert not os.path.exists(os.path.join(vk_home, "snapshots", iid))
