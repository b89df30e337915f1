"""The Debian image builder: mmdebstrap (minbase + packages) from Debian's registry, made reproducible, cached.

Two builds of the same inputs (release, packages, arch, layer split, mmdebstrap version) give the same layer
digests as long as the registry serves the same package versions: what differs from run to run (logs, apt
caches and lists, *-old backups, the host's hostname and resolv.conf, shadow's "last changed" day, device
nodes) is removed or normalised, and the layer tars are written sorted, with numeric owners only and every
mtime clamped to the image's epoch (SOURCE_DATE_EPOCH, or the newest packaged file under /usr/share/doc).
Results are cached by those inputs: a repeated build names the already stored image at once. With `vm`,
debian_vm puts one layer for VMs (kernel, initramfs, systemd, guest agent) over these same base layers.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from virtkit.core.errors import InvalidArgument, SystemFailure, Unsupported

from ._fsutil import atomic_write, new_temp_name
from .store import ImageInfo, ImageStore

__all__ = ["RELEASES", "base_config", "build_base", "build_debian", "cached_manifest", "check_inputs", "input_key",
           "normalise", "write_layers"]

RELEASES = ("bullseye", "bookworm", "trixie", "sid", "oldstable", "stable", "testing", "unstable")
BUILDER_VERSION = 1
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Layer split points, most specific first: with layers=N the first N-1 are layers of their own.
SPLITS = ("usr/share", "usr/lib", "usr")
_PKG_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]+$")
_XATTRS = ("security.capability",)
# Removed (files below these dirs; the dirs stay) or dropped outright: what differs between two builds.
_EMPTY_DIRS = ("dev", "var/log", "var/cache/apt", "var/lib/apt/lists", "tmp", "var/tmp", "run")
_DROP = ("etc/hostname", "etc/passwd-", "etc/group-", "etc/shadow-", "etc/gshadow-", "etc/subuid-", "etc/subgid-",
         "etc/.pwd.lock", "var/cache/ldconfig/aux-cache", "var/lib/dbus/machine-id", "var/lib/dpkg/lock",
         "var/lib/dpkg/lock-frontend", "var/lib/dpkg/triggers/Lock")
_DROP_GLOBS = ("var/lib/dpkg/*-old", "var/cache/debconf/*-old")


def build_debian(store: ImageStore, name: str | None = None, release: str = "bookworm",
                 packages: Sequence[str] = (), arch: str = "amd64", layers: int = 1, vm: bool = False,
                 no_cache: bool = False, progress: Callable[[str], None] | None = None) -> ImageInfo:
    """Build image `name` (default "debian"), or name the cached build of the same inputs at once.

    `vm` puts one more layer on the very base layer(s) a plain build of the same inputs makes (so the two
    images share those blobs): kernel, initramfs, systemd, guest agent; see debian_vm.
    """
    say = progress or (lambda _m: None)
    release, pkgs = check_inputs(release, packages, arch, layers)
    name = name or "debian"
    if os.geteuid() != 0:
        raise Unsupported("image build debian: needs root (mmdebstrap --mode=root)")
    base_doc = {"builder": BUILDER_VERSION, "release": release, "packages": pkgs, "arch": arch, "layers": layers,
                "mmdebstrap": _mmdebstrap_version(), "epoch": os.environ.get("SOURCE_DATE_EPOCH")}
    key_doc = base_doc
    if vm:
        from .debian_vm import vm_inputs

        key_doc = {**base_doc, "vm": vm_inputs()}
    cache_file = store.cache / "debian" / f"{input_key(key_doc)}.json"
    if not no_cache and (digest := cached_manifest(cache_file)) and (info := store.tag(name, digest)) is not None:
        say(f"using the cached build of {release} {','.join(pkgs) or '(minbase)'}{' --vm' if vm else ''}"
            f" ({digest[7:19]})")
        return info
    with tempfile.TemporaryDirectory(prefix=new_temp_name() + "-debian-", dir=store.tmp) as work:
        if vm:
            from .debian_vm import build_vm_image

            info = build_vm_image(store, name, Path(work), base_doc, no_cache, say)
        else:
            tars, epoch, _ = build_base(Path(work), base_doc, say)
            say(f"compressing and storing image {name}")
            info = store.add_image(name, tars, base_config(base_doc, epoch, len(tars)))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(cache_file, json.dumps({"manifest": info.digest, "inputs": key_doc}).encode(), store.tmp)
    return info


def input_key(doc: dict) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def cached_manifest(cache_file: Path) -> str | None:
    """The manifest digest a cache entry names (its blobs may since have been collected: check)."""
    try:
        digest = json.loads(cache_file.read_bytes())["manifest"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return digest if isinstance(digest, str) else None


def build_base(work: Path, doc: dict, say: Callable[[str], None],
               keep_rootfs: bool = False) -> tuple[list[str | Path], int, Path]:
    """mmdebstrap, normalise, write the layer tars into `work`: (tars lowest first, epoch, rootfs dir)."""
    rootfs = work / "rootfs"
    _mmdebstrap(rootfs, doc["release"], doc["packages"], doc["arch"], say)
    say("normalising the rootfs for a reproducible layer")
    epoch_env = doc["epoch"]
    epoch = int(epoch_env) if epoch_env and epoch_env.isdigit() else _doc_epoch(rootfs)
    normalise(rootfs, epoch)
    say(f"writing {doc['layers']} layer tar(s)")
    tars = write_layers(rootfs, work, epoch, doc["layers"])
    if not keep_rootfs:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tars, epoch, rootfs


def base_config(doc: dict, epoch: int, n_layers: int) -> dict:
    created = _rfc3339(epoch)
    return {
        "architecture": doc["arch"], "os": "linux", "created": created,
        "config": {"Env": [PATH_ENV], "Cmd": ["bash"], "WorkingDir": "/"},
        "history": [{"created": created, "created_by": f"virtkit build debian {doc['release']} minbase"
                     f" +{','.join(doc['packages']) or '-'} (mmdebstrap {doc['mmdebstrap']}),"
                     f" layer {i + 1}/{n_layers}"}
                    for i in range(n_layers)],
    }


def check_inputs(release: str, packages: Sequence[str], arch: str, layers: int) -> tuple[str, list[str]]:
    if release not in RELEASES:
        raise InvalidArgument(f"release: {release!r} is not a Debian release virtkit builds"
                              f" (one of: {', '.join(RELEASES)})")
    if isinstance(packages, str):
        packages = [p for p in packages.split(",") if p.strip()]
    pkgs = sorted({p.strip() for p in packages})
    for p in pkgs:
        if not _PKG_RE.match(p):
            raise InvalidArgument(f"packages: {p!r} is not a valid Debian package name")
    if arch != "amd64":
        raise InvalidArgument(f"arch: {arch!r} is not supported (amd64 only)")
    if not isinstance(layers, int) or not 1 <= layers <= len(SPLITS) + 1:
        raise InvalidArgument(f"layers: must be 1 to {len(SPLITS) + 1}")
    return release, pkgs


def _mmdebstrap_version() -> str:
    try:
        out = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True, check=True).stdout
    except (FileNotFoundError, subprocess.CalledProcessError) as exc:
        raise Unsupported("image build debian: mmdebstrap is not installed (apt-get install mmdebstrap)") from exc
    return out.strip().split()[-1]


def _mmdebstrap(rootfs: Path, release: str, pkgs: list[str], arch: str, say: Callable[[str], None]) -> None:
    argv = ["mmdebstrap", "--variant=minbase", "--mode=root", f"--architectures={arch}", "--format=directory"]
    if pkgs:
        argv.append("--include=" + ",".join(pkgs))
    argv += [release, str(rootfs)]
    say("running " + " ".join(argv))
    # In private mount and pid namespaces, tied to us: if virtkitd dies mid-build, the kernel ends mmdebstrap
    # and its chroot mounts (proc, sys, dev) with it, so the next open's cleanup of our temp dir never walks
    # into a mounted /proc or /dev.
    argv = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--kill-child=SIGKILL", *argv]
    rc, text = run_streamed(argv, say)
    if rc != 0:
        missing = re.findall(r"Unable to locate package (\S+)|Package '?(\S+?)'? has no installation candidate", text)
        if missing:
            names = sorted({a or b for a, b in missing})
            raise InvalidArgument(f"packages: {', '.join(names)} not found in Debian {release}")
        raise SystemFailure(f"mmdebstrap failed (exit {rc}): {text[-1500:]}")


def run_streamed(argv: list[str], say: Callable[[str], None]) -> tuple[int, str]:
    """Run argv, passing each output line to `say`; (exit status, its last 30 lines). Killed if we are."""
    tail: list[str] = []
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, errors="replace", preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                tail = (tail + [line])[-30:]
                say(line)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return rc, "\n".join(tail)


def _die_with_parent() -> None:
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _doc_epoch(rootfs: Path) -> int:
    """The newest mtime of a packaged file under /usr/share/doc: fixed by the package set, not the build time."""
    newest = 0
    for dirpath, _dirs, files in os.walk(rootfs / "usr/share/doc"):
        for f in files:
            try:
                newest = max(newest, int(os.lstat(os.path.join(dirpath, f)).st_mtime))
            except OSError:
                continue
    return newest


def _rfc3339(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def normalise(rootfs: Path, epoch: int) -> None:
    """Remove or rewrite what two builds of the same inputs would not share."""
    for d in _EMPTY_DIRS:
        top = rootfs / d
        if top.is_dir() and not top.is_symlink():
            for entry in os.scandir(top):
                if entry.is_dir(follow_symlinks=False):
                    if d == "dev":
                        shutil.rmtree(entry.path)
                    else:
                        _remove_files(Path(entry.path))
                else:
                    os.unlink(entry.path)
    for rel in _DROP:
        (rootfs / rel).unlink(missing_ok=True)
    for pattern in _DROP_GLOBS:
        for p in rootfs.glob(pattern):
            p.unlink()
    resolv = rootfs / "etc/resolv.conf"
    if resolv.exists() or resolv.is_symlink():
        resolv.unlink()
        resolv.write_bytes(b"")
    mid = rootfs / "etc/machine-id"
    if mid.exists():
        mid.write_bytes(b"")   # "uninitialized": systemd makes one on first boot
    for shadow in ("etc/shadow", "etc/gshadow"):
        _fix_shadow_days(rootfs / shadow, epoch // 86400)


def _remove_files(d: Path) -> None:
    """Remove the files under `d`, keeping its directory tree (packages own those dirs)."""
    for dirpath, _dirs, files in os.walk(d):
        for f in files:
            os.unlink(os.path.join(dirpath, f))


def _fix_shadow_days(path: Path, days: int) -> None:
    if not path.is_file() or path.name != "shadow":
        return
    st = path.stat()
    lines = []
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            fields[2] = str(days)
        lines.append(":".join(fields))
    path.write_text("\n".join(lines) + "\n")
    os.chmod(path, stat.S_IMODE(st.st_mode))


def _layer_of(rel: str, splits: Sequence[str]) -> int:
    """Index into [base, *splits] of the layer that holds `rel`."""
    for i, prefix in enumerate(splits):
        if rel == prefix or rel.startswith(prefix + "/"):
            return i + 1
    return 0


def write_layers(rootfs: Path, outdir: Path, epoch: int, layers: int = 1) -> list[str | Path]:
    """The rootfs as `layers` deterministic tars (lowest first): sorted, numeric owners, mtimes <= epoch.

    A path belongs to the layer of its most specific split prefix; each layer also carries the directories
    above its paths (same metadata, so overlayfs merges them), and a hardlink whose first name is in another
    layer is stored as a file.
    """
    splits = SPLITS[:layers - 1]
    paths: list[str | Path] = [outdir / f"layer{i}.tar" for i in range(len(splits) + 1)]
    tfs = [tarfile.open(p, "w", format=tarfile.PAX_FORMAT) for p in paths]  # noqa: SIM115 - closed below
    written_dirs: list[set[str]] = [set() for _ in tfs]
    try:
        for rel in _sorted_walk(rootfs):
            idx = _layer_of(rel, splits)
            parent = rel.rpartition("/")[0]
            missing = []
            while parent and parent not in written_dirs[idx]:
                missing.append(parent)
                parent = parent.rpartition("/")[0]
            for d in reversed(missing):
                _add(tfs[idx], rootfs, d, epoch)
                written_dirs[idx].add(d)
            if _add(tfs[idx], rootfs, rel, epoch):
                written_dirs[idx].add(rel)
    finally:
        for tf in tfs:
            tf.close()
    order = [0, *range(len(splits), 0, -1)]   # base, then usr, usr/lib, usr/share
    return [paths[i] for i in order]


def _sorted_walk(root: Path) -> list[str]:
    out: list[str] = []

    def walk(d: str) -> None:
        full = os.path.join(root, d) if d else str(root)
        for entry in sorted(os.scandir(full), key=lambda e: e.name):
            rel = f"{d}/{entry.name}" if d else entry.name
            out.append(rel)
            if entry.is_dir(follow_symlinks=False):
                walk(rel)

    walk("")
    return out


def _add(tf: tarfile.TarFile, root: Path, rel: str, epoch: int) -> bool:
    """Add `rel`; False (skipped) for device nodes and sockets, which have no place in a layer."""
    full = root / rel
    st = os.lstat(full)
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) or stat.S_ISSOCK(st.st_mode):
        return False
    ti = tf.gettarinfo(str(full), arcname=rel)   # tracks inodes: a second name of a file becomes a hardlink
    ti.uname = ti.gname = ""
    ti.mtime = min(int(st.st_mtime), epoch)
    if ti.isreg() or ti.isdir():
        for key in _XATTRS:
            try:
                value = os.getxattr(full, key, follow_symlinks=False)
            except OSError:
                continue
            ti.pax_headers = {**ti.pax_headers, f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")}
    if ti.isreg():
        with open(full, "rb") as f:
            tf.addfile(ti, f)
    else:
        tf.addfile(ti)
    return True
