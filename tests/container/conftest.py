"""Fixtures for the runtime tests: a busybox rootfs, bundles, a private runtime root, and leak checks."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

BUSYBOX = "/usr/bin/busybox"
CGROUP_ROOT = "/sys/fs/cgroup"


def _mounts_under(path: str) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4]
            if mnt == path or mnt.startswith(path.rstrip("/") + "/"):
                out.append(mnt)
    return out


def _virtkit_cgroups(suffix: str) -> list[str]:
    found = []
    for hier in os.listdir(CGROUP_ROOT):
        base = os.path.join(CGROUP_ROOT, hier)
        for dirpath, dirs, _files in os.walk(base):
            for d in dirs:
                if suffix in d:
                    found.append(os.path.join(dirpath, d))
            if dirpath.count("/") > base.count("/") + 3:
                dirs[:] = []
    return found


def make_rootfs(path: str) -> str:
    """A minimal busybox root filesystem: static busybox, applet links, passwd/group, empty mount points."""
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "mnt"):
        os.makedirs(os.path.join(path, d), exist_ok=True)
    os.chmod(os.path.join(path, "tmp"), 0o1777)
    shutil.copy2(BUSYBOX, os.path.join(path, "bin/busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        link = os.path.join(path, "bin", a)
        if a != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(path, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(path, "etc/group"), "w") as f:
        f.write("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n")
    return path


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One shared pristine rootfs; tests that modify a rootfs copy it (see `bundle`)."""
    if not os.path.exists(BUSYBOX):
        pytest.skip("busybox-static is not installed")
    return make_rootfs(str(tmp_path_factory.mktemp("busybox") / "rootfs"))


class Bundle:
    """A bundle directory whose config.json is written from `spec` by save()."""

    def __init__(self, path: str, spec: dict[str, Any]) -> None:
        self.path = path
        self.spec = spec
        self.rootfs = os.path.join(path, "rootfs")

    def save(self) -> str:
        with open(os.path.join(self.path, "config.json"), "w") as f:
            json.dump(self.spec, f)
        return self.path

    def args(self, *argv: str) -> Bundle:
        self.spec["process"]["args"] = list(argv)
        return self


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def cid(uid: str) -> str:
    return f"virtkit-test-{uid}"


@pytest.fixture
def runtime_root(tmp_path: Any) -> str:
    root = str(tmp_path / "rt")
    os.makedirs(root)
    return root


@pytest.fixture
def runtime(runtime_root: str, no_leaks: None) -> Iterator[Any]:
    from virtkit.container.runtime import Runtime

    rt = Runtime(runtime_root)
    yield rt
    for st in rt.list():
        try:
            rt.delete(st["id"], force=True)
        except Exception:  # noqa: BLE001 - best effort, the leak check below reports what stays
            pass


@pytest.fixture
def bundle(tmp_path: Any, busybox_rootfs: str, cid: str, uid: str, no_leaks: None) -> Bundle:
    from virtkit.container.spec import default_spec

    path = str(tmp_path / "bundle")
    os.makedirs(path)
    # hard links keep the copy fast while letting a test replace files in its own tree
    shutil.copytree(busybox_rootfs, os.path.join(path, "rootfs"), symlinks=True, copy_function=os.link)
    spec = default_spec(args=["true"])
    spec["root"]["readonly"] = False
    spec["linux"]["cgroupsPath"] = f"/virtkit-test-{uid}/{cid}"
    spec["linux"].pop("resources", None)
    return Bundle(path, copy.deepcopy(spec))


@pytest.fixture
def no_leaks(tmp_path: Any, uid: str) -> Iterator[None]:
    """After the test: no mount under its tmp dir, no cgroup dir carrying its suffix."""
    yield
    mounts = _mounts_under(str(tmp_path))
    groups = _virtkit_cgroups(uid)
    for m in reversed(mounts):
        subprocess.run(["umount", "-l", m], check=False)
    for g in sorted(groups, key=len, reverse=True):
        try:
            os.rmdir(g)
        except OSError:
            pass
    assert not mounts, f"mounts left behind: {mounts}"
    assert not groups, f"cgroups left behind: {groups}"


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, mounts, cgroups)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)
