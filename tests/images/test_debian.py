"""The Debian builder's reproducibility parts, on a fake rootfs (the real mmdebstrap build is an e2e slow test):
normalisation, deterministic layer tars, the layer split, input checks and the build cache."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import time
from pathlib import Path

import pytest

from virtkit.core.errors import InvalidArgument
from virtkit.images import debian
from virtkit.images.store import ImageStore


def fake_rootfs(root: Path, stamp: float) -> Path:
    for d in ("etc", "dev", "var/log/apt", "var/cache/apt/archives", "var/lib/apt/lists", "var/lib/dpkg",
              "usr/bin", "usr/lib/x86_64-linux-gnu", "usr/share/doc/bash", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    files = {"etc/hostname": "buildhost\n", "etc/resolv.conf": "nameserver 10.0.0.1\n",
             "etc/shadow": f"root:*:{int(stamp // 86400)}:0:99999:7:::\n", "etc/passwd-": "old\n",
             "var/log/dpkg.log": f"{stamp} installed\n", "var/log/apt/history.log": "x\n",
             "var/cache/apt/pkgcache.bin": "cache", "var/lib/apt/lists/deb.debian.org_Release": "lists",
             "var/lib/dpkg/status": "Package: bash\n", "var/lib/dpkg/status-old": "old",
             "usr/bin/bash": "ELF", "usr/lib/x86_64-linux-gnu/libc.so.6": "libc",
             "usr/share/doc/bash/changelog.Debian.gz": "log", "tmp/junk": "j"}
    for rel, text in files.items():
        (root / rel).write_text(text)
    os.link(root / "usr/bin/bash", root / "usr/bin/rbash")           # a hardlink inside one layer
    os.link(root / "usr/lib/x86_64-linux-gnu/libc.so.6", root / "etc/libc-copy")   # ... and across layers
    (root / "usr/bin/sh").symlink_to("bash")
    os.mkfifo(root / "etc/fifo")
    os.utime(root / "usr/share/doc/bash/changelog.Debian.gz", (1_700_000_000, 1_700_000_000))
    for dirpath, dirs, fnames in os.walk(root):
        for n in dirs + fnames:
            p = os.path.join(dirpath, n)
            if n != "changelog.Debian.gz" and not os.path.islink(p):
                os.utime(p, (stamp, stamp))
    return root


def build_tars(tmp: Path, tag: str, stamp: float, layers: int) -> tuple[list[bytes], int]:
    root = fake_rootfs(tmp / f"root-{tag}", stamp)
    epoch = debian._doc_epoch(root)
    debian.normalise(root, epoch)
    out = tmp / f"out-{tag}"
    out.mkdir()
    return [Path(p).read_bytes() for p in debian.write_layers(root, out, epoch, layers)], epoch


@pytest.mark.parametrize("layers", [1, 4])
def test_two_builds_at_different_times_give_identical_layers(tmp_path: Path, layers: int) -> None:
    a, epoch = build_tars(tmp_path, "a", time.time(), layers)
    b, _ = build_tars(tmp_path, "b", time.time() + 86400 * 3, layers)
    assert epoch == 1_700_000_000
    assert [hashlib.sha256(x).hexdigest() for x in a] == [hashlib.sha256(x).hexdigest() for x in b]
    assert len(a) == layers


def test_normalised_content_and_tar_shape(tmp_path: Path) -> None:
    tars, epoch = build_tars(tmp_path, "a", time.time(), 4)
    members: dict[str, tarfile.TarInfo] = {}
    per_layer: list[set[str]] = []
    for i, data in enumerate(tars):
        path = tmp_path / f"l{i}.tar"
        path.write_bytes(data)
        with tarfile.open(path) as tf:
            names = tf.getnames()
            assert names == sorted(names, key=lambda n: n.split("/"))   # parents first, sorted
            per_layer.append(set(names))
            for m in tf.getmembers():
                assert m.uname == m.gname == "" and m.mtime <= epoch
                members.setdefault(m.name, m)
            if "etc/shadow" in names:
                assert tf.extractfile("etc/shadow").read() == f"root:*:{epoch // 86400}:0:99999:7:::\n".encode()
                assert tf.extractfile("etc/resolv.conf").read() == b""
    gone = {"etc/hostname", "etc/passwd-", "var/log/dpkg.log", "var/log/apt/history.log", "tmp/junk",
            "var/cache/apt/pkgcache.bin", "var/lib/apt/lists/deb.debian.org_Release", "var/lib/dpkg/status-old"}
    assert not gone & set(members)
    assert {"var/log/apt", "var/lib/apt/lists", "dev", "tmp", "etc/fifo"} <= set(members)
    assert "usr/share/doc/bash/changelog.Debian.gz" in per_layer[3] and "usr/bin/bash" in per_layer[1]
    assert "usr/lib/x86_64-linux-gnu/libc.so.6" in per_layer[2] and "etc/shadow" in per_layer[0]
    assert members["usr/bin/rbash"].islnk() and members["usr/bin/rbash"].linkname == "usr/bin/bash"
    assert members["etc/libc-copy"].isreg()        # its other name lives in another layer
    assert members["usr/bin/sh"].issym()


def test_input_checks() -> None:
    with pytest.raises(InvalidArgument, match="release: 'hamm'"):
        debian.check_inputs("hamm", [], "amd64", 1)
    with pytest.raises(InvalidArgument, match="packages: 'Bad Pkg'"):
        debian.check_inputs("bookworm", ["Bad Pkg"], "amd64", 1)
    with pytest.raises(InvalidArgument, match="arch: 'arm64'"):
        debian.check_inputs("bookworm", [], "arm64", 1)
    with pytest.raises(InvalidArgument, match="layers"):
        debian.check_inputs("bookworm", [], "amd64", 9)
    assert debian.check_inputs("bookworm", ["vim", "curl", "vim"], "amd64", 1) == ("bookworm", ["curl", "vim"])


def test_a_cached_build_is_named_at_once_and_rebuilt_once_collected(tmp_path: Path, monkeypatch) -> None:
    store = ImageStore(tmp_path / "images")
    calls: list[str] = []

    def fake_mmdebstrap(rootfs: Path, release: str, pkgs: list[str], arch: str, say) -> None:  # type: ignore[no-untyped-def]
        calls.append(release)
        fake_rootfs(rootfs, 1_600_000_000)

    monkeypatch.setattr(debian, "_mmdebstrap", fake_mmdebstrap)
    monkeypatch.setattr(debian, "_mmdebstrap_version", lambda: "1.3.5")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    lines: list[str] = []
    first = debian.build_debian(store, "deb", packages=["curl"], progress=lines.append)
    assert calls == ["bookworm"] and first.config["config"]["Cmd"] == ["bash"]
    assert any("PATH=" in e for e in first.config["config"]["Env"]) and lines
    again = debian.build_debian(store, "deb2", packages=["curl"], progress=lines.append)
    assert calls == ["bookworm"] and again.digest == first.digest and "cached" in lines[-1]
    forced = debian.build_debian(store, "deb3", packages=["curl"], no_cache=True)
    assert calls == ["bookworm"] * 2 and forced.digest == first.digest
    for n in ("deb", "deb2", "deb3"):
        store.remove(n)
    store.prune()
    rebuilt = debian.build_debian(store, "deb", packages=["curl"])
    assert calls == ["bookworm"] * 3 and rebuilt.digest == first.digest
    cache = json.loads(next((store.cache / "debian").iterdir()).read_text())
    assert cache["manifest"] == first.digest and cache["inputs"]["packages"] == ["curl"]


@pytest.mark.slow
@pytest.mark.root
def test_kill_9_mid_build_leaves_no_mounts_and_the_next_open_cleans_up(tmp_path: Path) -> None:
    import shutil
    import signal
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("mmdebstrap") is None:
        pytest.skip("needs root and mmdebstrap (apt-get install mmdebstrap)")
    root = tmp_path / "images"
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[2])!r})\n"
            "from virtkit.images.debian import build_debian\nfrom virtkit.images.store import ImageStore\n"
            f"build_debian(ImageStore({str(root)!r}), 'deb', progress=lambda m: print(m, flush=True))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:             # kill it once the chroot is being set up (proc, sys, dev mounted)
        seen.append(line)
        if "installing" in line:
            break
    assert "installing" in seen[-1], seen
    mounted_during_build = str(root) in Path(f"/proc/{proc.pid}/mountinfo").read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()

    def mounts() -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [ln for ln in f if str(root) in ln]

    deadline = time.monotonic() + 10
    while mounts() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert mounts() == []
    assert not mounted_during_build      # the chroot's mounts were never visible outside the build
    deadline = time.monotonic() + 10
    while subprocess.run(["pgrep", "-f", str(root)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "mmdebstrap outlived the build"
        time.sleep(0.1)
    store = ImageStore(root)
    assert list(store.tmp.iterdir()) == [] and store.list() == []
    assert Path("/proc/self").exists() and Path("/dev/null").exists()
