"""build_busybox: a real build from Debian's busybox-static, reproducible, cached, and runnable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from images_helpers import as_root

from virtkit.core.errors import SystemFailure
from virtkit.images import busybox as busybox_mod
from virtkit.images.busybox import build_busybox
from virtkit.images.store import ImageStore


def _build_or_skip(store: ImageStore, progress) -> object:
    try:
        return build_busybox(store, progress=progress)
    except SystemFailure as exc:
        if "apt-get update" in str(exc):
            pytest.skip(f"apt package lists missing on this host: {exc}")
        raise


@pytest.mark.slow
@as_root
def test_busybox_build_is_reproducible_cached_and_runs(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    first_msgs: list[str] = []
    info = _build_or_skip(store, first_msgs.append)
    assert store.exists("busybox") and store.get("busybox:latest") == info
    cfg = info.config
    assert cfg["config"]["Cmd"] == ["sh"] and cfg["config"]["WorkingDir"] == "/"
    assert cfg["config"]["Env"] == ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]
    assert (cfg["architecture"], cfg["os"]) == ("amd64", "linux")
    assert list(store.cache.glob("busybox-static_*.deb"))

    [layer] = store.layer_paths("busybox")
    assert (layer / "bin" / "busybox").is_file() and os.access(layer / "bin" / "busybox", os.X_OK)
    assert os.readlink(layer / "bin" / "sh") == "busybox" and os.readlink(layer / "bin" / "ls") == "busybox"
    assert "root:x:0:0:" in (layer / "etc" / "passwd").read_text()
    assert "nobody:x:65534:65534:" in (layer / "etc" / "passwd").read_text()
    assert (layer / "etc" / "resolv.conf").read_bytes() == b""
    assert not (layer / "etc" / "hostname").exists()
    assert (layer / "tmp").stat().st_mode & 0o7777 == 0o1777
    for d in ("proc", "sys", "dev", "root", "var/www"):
        assert (layer / d).is_dir() and os.listdir(layer / d) == []

    # The layer is a working root: its shell runs its own applets.
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    out = subprocess.run([chroot, str(layer), "/bin/sh", "-c", "echo $((6*7)); ls /bin | grep -c ."],
                         capture_output=True, text=True, check=True, timeout=30, env={"PATH": "/bin"})
    lines = out.stdout.split()
    assert lines[0] == "42" and int(lines[1]) > 100

    second_msgs: list[str] = []
    again = build_busybox(store, progress=second_msgs.append)
    assert again.digest == info.digest
    assert not any(m.startswith("downloading") for m in second_msgs), second_msgs
    assert [i.name for i in store.list()] == ["busybox:latest"]


def test_missing_apt_lists_say_to_run_apt_get_update(tmp_path: Path, monkeypatch) -> None:
    real_run = subprocess.run

    def fake_run(argv, *args, **kwargs):
        if argv[0] == "apt-get":
            return subprocess.CompletedProcess(argv, 100, "", "E: Unable to locate package busybox-static\n")
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(busybox_mod.subprocess, "run", fake_run)
    store = ImageStore(tmp_path / "images")
    with pytest.raises(SystemFailure, match="apt-get update"):
        build_busybox(store)
    assert not store.exists("busybox")
    assert [p.name for p in store.tmp.iterdir()] == []
