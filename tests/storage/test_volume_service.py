"""VolumeService policy over a real SQLite store and fake volume files (no root, no syscalls)."""

from __future__ import annotations

import os

import pytest

from virtkit.core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from virtkit.core.models import Instance
from virtkit.core.options import parse_volume, validate_create
from virtkit.core.volumes import VolumeService, validate_volume_size
from virtkit.store.sqlite import SQLiteStore


class FakeFiles:
    def __init__(self) -> None:
        self.made: dict[str, tuple[str, int | None]] = {}
        self.mounted: set[str] = set()
        self.calls: list[tuple[str, str]] = []
        self.fail_mount = False

    def data_path(self, name: str) -> str:
        return f"/vols/{name}/data"

    def image_path(self, name: str) -> str:
        return f"/vols/{name}/disk.ext4"

    def create(self, name: str, driver: str, size: int | None) -> None:
        self.made[name] = (driver, size)
        self.calls.append(("create", name))

    def remove(self, name: str) -> None:
        self.mounted.discard(name)
        self.made.pop(name, None)
        self.calls.append(("remove", name))

    def is_mounted(self, name: str) -> bool:
        return name in self.mounted

    def mount(self, name: str) -> None:
        if self.fail_mount:
            from virtkit.core.errors import SystemFailure

            raise SystemFailure("mount failed")
        self.mounted.add(name)
        self.calls.append(("mount", name))

    def unmount(self, name: str) -> None:
        if name in self.mounted:
            self.calls.append(("unmount", name))
        self.mounted.discard(name)

    def usage(self, name: str, driver: str) -> int:
        return 0

    def cleanup(self, known: set[str]) -> tuple[list[str], list[str]]:
        return [], [n for n in self.made if n not in known]


@pytest.fixture
def env(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    files = FakeFiles()
    return store, files, VolumeService(store, files)


def _inst(store: SQLiteStore, name: str, volumes: list[str]) -> Instance:
    spec = validate_create({"image": "busybox", "volumes": volumes})
    inst = Instance(id=name.ljust(32, "0"), name=name, type="container", state="created", image="busybox",
                    spec=spec, created_at=1.0)
    store.add_instance(inst)
    return inst


def test_create_list_inspect_remove(env):
    store, files, svc = env
    svc.create({"name": "data"})
    svc.create({"name": "q", "size": "1G"})
    assert files.made == {"data": ("dir", None), "q": ("ext4", 1 << 30)}
    listed = {v["name"]: v for v in svc.list()}
    assert listed["q"]["image"] == "/vols/q/disk.ext4" and listed["data"]["image"] is None
    assert listed["q"]["mounted"] is False and listed["data"]["used_by"] == []
    assert svc.inspect("q")["path"] == "/vols/q/data"
    svc.remove("data")
    with pytest.raises(NotFound, match="volume 'data' not found"):
        svc.inspect("data")
    assert "data" not in files.made


@pytest.mark.parametrize("req, message", [
    ({"name": "bad/name"}, "name: invalid name"),
    ({"name": None}, "name: invalid name"),
    ({"name": "x", "size": 0}, "below the smallest"),
    ({"name": "x", "size": "0"}, "below the smallest"),
    ({"name": "x", "size": "-5M"}, "cannot parse size"),
    ({"name": "x", "size": "1.5.5G"}, "cannot parse size"),
    ({"name": "x", "size": True}, "expected a size"),
    ({"name": "x", "size": "1M"}, "below the smallest ext4 volume"),
    ({"name": "x", "size": "17T"}, "above the largest volume"),
    ({"name": "x", "size": "1G", "driver": "dir"}, "a dir volume has no size limit"),
    ({"name": "x", "driver": "ext4"}, "an ext4 volume needs a size"),
    ({"name": "x", "driver": "zfs"}, "unknown volume driver"),
])
def test_bad_input_makes_nothing(env, req, message):
    store, files, svc = env
    with pytest.raises(InvalidArgument, match=message):
        svc.create(req)
    assert files.calls == [] and store.list_volumes() == []


def test_sizes_round_up_to_blocks():
    assert validate_volume_size("2M") == 2 << 20
    assert validate_volume_size(3_000_001) == 3_002_368
    assert validate_volume_size("1.5G") == 3 << 29


def test_duplicate_name(env):
    _store, files, svc = env
    svc.create({"name": "data"})
    with pytest.raises(AlreadyExists, match="volume named 'data' already exists"):
        svc.create({"name": "data", "size": "8M"})
    assert files.made["data"] == ("dir", None)


def test_prepare_creates_on_first_use_mounts_ext4_and_undoes(env):
    store, files, svc = env
    svc.create({"name": "q", "size": "8M"})
    inst = _inst(store, "web", ["auto:/a", "q:/q:ro", "/tmp:/host"])
    undo = svc.prepare(inst)
    assert [v["source"] for v in inst.spec["volumes"]] == ["/vols/auto/data", "/vols/q/data", "/tmp"]
    assert inst.spec["volumes"][1]["readonly"] is True
    assert files.made["auto"] == ("dir", None) and files.mounted == {"q"}
    # the instance's create failed: the volume made for it goes, the ext4 one is unmounted, kept
    store.delete_instance(inst.id)
    assert undo is not None
    undo()
    assert "auto" not in files.made and [v.name for v in store.list_volumes()] == ["q"]
    assert files.mounted == set()


def test_in_use_refused_and_last_user_unmounts(env):
    store, files, svc = env
    svc.create({"name": "q", "size": "8M"})
    a, b = _inst(store, "a", ["q:/q"]), _inst(store, "b", ["q:/x"])
    svc.prepare(a)
    svc.prepare(b)
    with pytest.raises(InUse, match=r"volume 'q' is in use by instance\(s\) a, b"):
        svc.remove("q")
    store.delete_instance(a.id)
    svc.removed(a)
    assert files.mounted == {"q"}                        # b still refers to it
    store.delete_instance(b.id)
    svc.removed(b)
    assert files.mounted == set()
    svc.remove("q")


def test_mount_failure_undoes_prepare(env):
    store, files, svc = env
    svc.create({"name": "q", "size": "8M"})
    files.fail_mount = True
    inst = _inst(store, "web", ["fresh:/f", "q:/q"])
    with pytest.raises(Exception, match="mount failed"):
        svc.prepare(inst)
    assert "fresh" not in files.made


def test_cleanup_unmounts_unused_and_drops_unknown(env):
    store, files, svc = env
    svc.create({"name": "q", "size": "8M"})
    files.mounted.add("q")
    files.made["stray"] = ("dir", None)
    assert svc.cleanup() == ([], ["stray"])
    assert files.mounted == set() and "stray" in files.made        # unknown data is kept


@pytest.mark.parametrize("spec, want", [
    ("data:/var/lib/app", {"volume": "data", "source": None, "target": "/var/lib/app", "readonly": False}),
    ("data:/x:ro", {"volume": "data", "source": None, "target": "/x", "readonly": True}),
    ({"volume": "data", "target": "/x"}, {"volume": "data", "source": None, "target": "/x", "readonly": False}),
    ({"source": "data", "target": "/x"}, {"volume": "data", "source": None, "target": "/x", "readonly": False}),
    ("/tmp:/x", {"source": "/tmp", "target": "/x", "readonly": False}),
])
def test_parse_volume_named_and_bind(spec, want):
    assert parse_volume(spec) == want


@pytest.mark.parametrize("spec, message", [
    ("./rel:/x", "host path must be absolute"),
    ("bad name:/x", "host path must be absolute"),
    ("data:rel", "container path must be absolute"),
    ("data:/a/../b", "container path must be absolute"),
    ({"volume": "data", "source": "/tmp", "target": "/x"}, "either source"),
])
def test_parse_volume_errors(spec, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_volume(spec)


def test_volumes_and_snapshots_tables_migrate(tmp_path):
    from virtkit.core.snapshots import Snapshot

    store = SQLiteStore(str(tmp_path / "s.db"))
    inst = _inst(store, "web", [])
    store.add_snapshot(Snapshot(instance_id=inst.id, name="s1", size=10, created_at=2.0))
    with pytest.raises(AlreadyExists):
        store.add_snapshot(Snapshot(instance_id=inst.id, name="s1", size=10, created_at=2.0))
    assert [s.name for s in store.list_snapshots(inst.id)] == ["s1"]
    store.delete_instance(inst.id)                      # snapshots go with their instance
    assert store.list_snapshots() == []
    assert os.path.exists(tmp_path / "s.db")
