"""The busybox image builder: a minimal, reproducible rootfs from Debian's busybox-static package."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from virtkit.core.errors import SystemFailure

from ._fsutil import new_temp_name
from .store import ImageInfo, ImageStore

__all__ = ["build_busybox"]

PACKAGE = "busybox-static"
PATH_ENV = "PATH=/usr/sbin:/usr/bin:/sbin:/bin"
_PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
_GROUP = b"root:x:0:\nnogroup:x:65534:\n"
# name -> mode; everything else the image holds is a file or a symlink below these.
_DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o555, "root": 0o700, "sys": 0o555,
         "tmp": 0o1777, "var": 0o755, "var/www": 0o755}
_URI_RE = re.compile(r"^'(?P<url>[^']+)' (?P<file>\S+\.deb) (?P<size>\d+) SHA256:(?P<sha>[0-9a-f]{64})")


def build_busybox(store: ImageStore, name: str = "busybox",
                  progress: Callable[[str], None] | None = None) -> ImageInfo:
    """Build (or rebuild, bit-identically) the busybox image `name` in `store`."""
    say = progress or (lambda _msg: None)
    epoch = _source_date_epoch()
    with tempfile.TemporaryDirectory(prefix=new_temp_name() + "-busybox-", dir=store.tmp) as work:
        workdir = Path(work)
        deb, version = _fetch_deb(store.cache, workdir, say)
        say(f"extracting {deb.name}")
        extracted = workdir / "pkg"
        _run(["dpkg-deb", "-x", str(deb), str(extracted)], "dpkg-deb -x")
        busybox = extracted / "bin" / "busybox"
        if not busybox.is_file():
            raise SystemFailure(f"{deb.name} holds no bin/busybox")
        applets = _applets(busybox)
        say(f"writing the rootfs layer ({len(applets)} applets)")
        layer = workdir / "layer.tar"
        _write_rootfs_tar(layer, busybox, applets, epoch)
        created = _rfc3339(epoch)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
            "history": [{"created": created, "created_by": f"virtkit build_busybox from {PACKAGE} {version}"}],
        }
        say(f"adding image {name}")
        return store.add_image(name, [layer], config)


def _source_date_epoch() -> int:
    try:
        return max(0, int(os.environ.get("SOURCE_DATE_EPOCH", "0")))
    except ValueError:
        return 0


def _rfc3339(epoch: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


def _run(argv: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise SystemFailure(f"{what}: {argv[0]} is not installed") from exc
    if proc.returncode != 0:
        raise SystemFailure(f"{what} failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _apt_missing_lists(stderr: str) -> bool:
    return any(s in stderr for s in ("Unable to locate package", "has no installation candidate",
                                     "Can't select candidate version"))


def _fetch_deb(cache: Path, workdir: Path, say: Callable[[str], None]) -> tuple[Path, str]:
    """The busybox-static .deb, from `cache` when that version is there, else downloaded into it."""
    cache.mkdir(parents=True, exist_ok=True)
    # APT::Sandbox::User=root: apt's _apt user could not write into our private temp dir.
    apt = ["apt-get", "-q", "-o", "APT::Sandbox::User=root"]
    uris = subprocess.run(apt + ["download", "--print-uris", PACKAGE], capture_output=True, text=True,
                          check=False)
    match = next((m for line in uris.stdout.splitlines() if (m := _URI_RE.match(line.strip()))), None)
    if uris.returncode != 0 or match is None:
        cached = sorted(cache.glob(f"{PACKAGE}_*.deb"))
        if cached:
            say(f"apt cannot resolve {PACKAGE}; using cached {cached[-1].name}")
            return cached[-1], _version_of(cached[-1].name)
        if _apt_missing_lists(uris.stderr) or match is None:
            raise SystemFailure(f"cannot find the {PACKAGE} package: the apt package lists are missing or stale;"
                                f" run `apt-get update` and try again ({uris.stderr.strip()})")
        raise SystemFailure(f"apt-get download --print-uris {PACKAGE} failed: {uris.stderr.strip()}")
    filename, sha = match["file"], match["sha"]
    cached_deb = cache / filename
    if cached_deb.is_file() and _sha256_file(cached_deb) == sha:
        say(f"using cached {filename}")
        return cached_deb, _version_of(filename)
    say(f"downloading {PACKAGE} ({match['size']} bytes)")
    dl = subprocess.run(apt + ["download", PACKAGE], cwd=workdir, capture_output=True, text=True, check=False)
    if dl.returncode != 0:
        if _apt_missing_lists(dl.stderr):
            raise SystemFailure(f"cannot download {PACKAGE}: the apt package lists are missing;"
                                f" run `apt-get update` and try again ({dl.stderr.strip()})")
        raise SystemFailure(f"apt-get download {PACKAGE} failed: {dl.stderr.strip()}")
    got = workdir / filename
    if not got.is_file():
        found = sorted(workdir.glob(f"{PACKAGE}_*.deb"))
        if not found:
            raise SystemFailure(f"apt-get download {PACKAGE} produced no .deb")
        got = found[-1]
    if _sha256_file(got) != sha:
        raise SystemFailure(f"downloaded {got.name} does not match the SHA256 apt announced")
    tmp = cache / new_temp_name()
    shutil.copyfile(got, tmp)
    os.rename(tmp, cache / got.name)
    return cache / got.name, _version_of(got.name)


def _version_of(deb_name: str) -> str:
    from urllib.parse import unquote

    parts = deb_name.split("_")
    return unquote(parts[1]) if len(parts) >= 3 else "unknown"


def _sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _applets(busybox: Path) -> list[str]:
    out = _run([str(busybox), "--list"], "busybox --list").stdout
    names = {a.strip() for a in out.splitlines()}
    names |= {"sh"}
    names.discard("busybox")
    return sorted(n for n in names if n and "/" not in n and n not in (".", ".."))


def _write_rootfs_tar(path: Path, busybox: Path, applets: list[str], epoch: int) -> None:
    """A deterministic tar: sorted entries, owner 0:0, mtime `epoch`, no user or group names."""

    def info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, link
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.mtime = epoch
        return ti

    files = {"bin/busybox": (busybox.read_bytes(), 0o755), "etc/passwd": (_PASSWD, 0o644),
             "etc/group": (_GROUP, 0o644), "etc/resolv.conf": (b"", 0o644)}
    entries: list[tuple[str, tarfile.TarInfo, bytes | None]] = []
    for d, mode in _DIRS.items():
        entries.append((d, info(d, tarfile.DIRTYPE, mode), None))
    for f, (content, mode) in files.items():
        entries.append((f, info(f, tarfile.REGTYPE, mode, len(content)), content))
    for a in applets:
        entries.append((f"bin/{a}", info(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"), None))
    entries.sort(key=lambda e: e[0])
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for _, ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
