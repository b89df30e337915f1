"""VM disks under QEMU (TCG here): the image's base disk, the VM's overlay, its size, snapshot and restore."""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from virtkit.config import Home
from virtkit.core.errors import InvalidArgument, InvalidState, NotFound, SystemFailure
from virtkit.core.models import Instance
from virtkit.images.store import ImageStore
from virtkit.storage.vm_disks import BaseDisks
from virtkit.vm.qemu import kernel
from virtkit.vm.qemu.driver import QemuDriver

from .conftest import needs_qemu

pytestmark = needs_qemu

TICKS = ("mkdir -p /ticks; i=0; while true; do i=$((i+1)); echo $i > /ticks/$i; sync; "
         "echo \"tick $i count=$(ls /ticks | wc -l)\"; sleep 0.3; done")


def _layer(path: Path, entries: list[tuple[str, object, object]]) -> str:
    with tarfile.open(path, "w") as tf:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            elif kind == "symlink":
                ti.type, ti.linkname = tarfile.SYMTYPE, str(data)
                tf.addfile(ti)
            else:
                assert isinstance(data, bytes) and isinstance(kind, int)
                ti.size, ti.mode = len(data), kind
                tf.addfile(ti, io.BytesIO(data))
    return str(path)


def make_image(store: ImageStore, work: Path, name: str = "vmtest") -> None:
    """Two layers: busybox with /etc/os-release and /gone, then a new os-release and a whiteout of /gone."""
    busybox = kernel.busybox()
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    lower: list[tuple[str, object, object]] = [(d, "dir", None) for d in ("bin", "etc", "proc", "sys", "dev", "gone")]
    lower.append(("bin/busybox", 0o755, Path(busybox).read_bytes()))
    lower += [(f"bin/{a}", "symlink", "busybox") for a in applets if a != "busybox"]
    lower += [("etc/os-release", 0o644, b"ID=lower-layer\n"), ("gone/file", 0o644, b"x\n")]
    upper: list[tuple[str, object, object]] = [("etc", "dir", None), (".wh.gone", 0o644, b""),
                                               ("etc/os-release", 0o644, b"ID=virtkit-vm-disk-test\n")]
    store.add_image(name, [_layer(work / "lower.tar", lower), _layer(work / "upper.tar", upper)],
                    {"config": {"Cmd": ["sh"]}})


@pytest.fixture
def drv(home: Home, tmp_path: Path) -> QemuDriver:
    store = ImageStore(home.images)
    make_image(store, tmp_path)
    return QemuDriver(home, store)


def _instance(name: str, **spec: object) -> Instance:
    return Instance(id=os.urandom(16).hex(), name=name, type="vm", state="created", image="vmtest", spec=spec)


def _run_to_end(drv: QemuDriver, inst: Instance) -> str:
    drv.start(inst)
    deadline = time.monotonic() + 60
    while drv.exit_status(inst) is None:
        assert time.monotonic() < deadline, drv.console_output(inst)[-800:]
        time.sleep(0.05)
    status = drv.exit_status(inst)
    assert status is not None and status.code == 0, (status, drv.console_output(inst)[-800:])
    return drv.console_output(inst).decode(errors="replace")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_the_image_is_the_vms_root_and_its_writes_persist_in_its_overlay_only(drv: QemuDriver) -> None:
    inst = _instance("disk", disk_size=2 << 30, command=[
        "sh", "-c", "cat /etc/os-release; [ -e /gone ] && echo gone-is-there; df -k / | tail -1; "
                    "echo run >> /persist; echo runs=$(wc -l < /persist)"])
    drv.create(inst)
    try:
        disk = drv.info(inst)["disk"]
        base = disk["base"]
        assert disk["size"] == 2 << 30 and disk["base_size"] >= 1 << 30
        assert os.stat(base).st_mode & 0o777 == 0o444
        before = _sha256(base)
        first = _run_to_end(drv, inst)
        assert "ID=virtkit-vm-disk-test" in first and "gone-is-there" not in first   # the upper layer wins
        assert "runs=1" in first
        fs_kib = int(re.search(r"^/dev/vda\s+(\d+)", first, re.M).group(1))      # type: ignore[union-attr]
        assert fs_kib > 1_800_000, first                                            # grown to ~2G on the host
        second = _run_to_end(drv, inst)                                              # stop/start: same disk
        assert "runs=2" in second
        assert _sha256(base) == before
    finally:
        drv.delete(inst)
    assert not os.path.exists(drv.vm_dir(inst))
    assert os.path.exists(base)              # the image's base disk stays for its next VM


def test_a_disk_smaller_than_the_images_is_refused_with_nothing_made(drv: QemuDriver) -> None:
    inst = _instance("small", disk_size=64 << 20)
    with pytest.raises(InvalidArgument, match=r"disk_size: 64M is too small: .* needs at least 1G"):
        drv.create(inst)
    assert not os.path.exists(drv.vm_dir(inst))


def test_the_base_disk_is_built_once_under_concurrent_creates(drv: QemuDriver) -> None:
    store = drv.images
    info = store.get("vmtest")
    layers = [str(p) for p in store.layer_paths("vmtest")]
    disks = BaseDisks(drv.home.vm_disks)
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(disks.get(info.digest, layers))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len({os.stat(r.path).st_ino for r in results}) == 1  # type: ignore[attr-defined]
    assert [e for e in os.listdir(disks.root) if e.startswith(".tmp-")] == []


def test_base_disks_go_with_their_image_and_vms_keep_theirs(drv: QemuDriver, tmp_path: Path) -> None:
    store = drv.images
    disks = BaseDisks(drv.home.vm_disks)
    store.add_gc_hook(disks.collect)
    info = store.get("vmtest")
    base = disks.get(info.digest, [str(p) for p in store.layer_paths("vmtest")])
    os.link(base.path, tmp_path / "a-vms-link")
    store.remove("vmtest")
    assert disks.cached(info.digest) is None and not os.path.exists(base.path)
    assert not [e for e in os.listdir(disks.root) if info.digest.split(":")[1] in e]
    assert os.path.getsize(tmp_path / "a-vms-link") == base.size


@pytest.mark.slow
def test_snapshot_then_a_write_then_restore_and_the_write_is_gone_while_the_guest_runs_on(
        drv: QemuDriver, tmp_path: Path) -> None:
    inst = _instance("snap", command=["sh", "-c", TICKS], memory="128M")
    drv.create(inst)

    def ticks() -> list[tuple[int, int]]:
        return [(int(a), int(b)) for a, b in re.findall(rb"tick (\d+) count=(\d+)", drv.console_output(inst))]

    def wait_for(pred: object) -> None:
        deadline = time.monotonic() + 60
        while not pred():  # type: ignore[operator]
            assert time.monotonic() < deadline, drv.console_output(inst)[-600:]
            time.sleep(0.05)

    snap = str(tmp_path / "s1")
    try:
        drv.start(inst)
        wait_for(lambda: len(ticks()) >= 2)
        drv.snapshot(inst, snap)
        state = "memory.state.zst" if shutil.which("zstd") else "memory.state"
        assert sorted(os.listdir(snap)) == ["disk.qcow2", state, "vm-snapshot.json"]
        taken = ticks()[-1][0]
        assert drv.status(inst) == "running"
        wait_for(lambda: ticks()[-1][0] >= taken + 4)          # the guest wrote files after the snapshot
        with pytest.raises(InvalidState, match="running"):
            drv.restore(inst, snap)
        drv.stop(inst, 10)
        with pytest.raises(NotFound):
            drv.restore(inst, str(tmp_path / "no-such-snapshot"))
        drv.restore(inst, snap)
        drv.start(inst)
        wait_for(lambda: len(ticks()) >= 2)
        tick, count = ticks()[0]
        # memory: it counts on from the snapshot, no boot; disk: the files written after it are gone
        assert tick <= taken + 2 and count == tick, (taken, ticks())
        assert not os.path.exists(drv._file(inst, "resume.state"))      # used once

        # a state QEMU cannot load: a clear error, and the start after boots afresh from the disk
        drv.stop(inst, 10)
        with open(drv._file(inst, "resume.state"), "wb") as f:
            f.write(b"not a migration stream")
        with pytest.raises(SystemFailure, match="could not resume from its restored memory"):
            drv.start(inst)
        assert drv.status(inst) == "stopped" and not os.path.exists(drv._file(inst, "resume.state"))
        drv.start(inst)
        wait_for(lambda: len(ticks()) >= 1)
        assert ticks()[0][0] == 1 and ticks()[0][1] > 1          # booted: counts from 1 on a disk with ticks
    finally:
        drv.delete(inst)
