"""Small filesystem helpers of the image store: atomic writes, crash-leftover temp names, overlay lowerdirs."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def new_temp_name() -> str:
    """A temp name that records its creator's pid, so a later open can tell stale leftovers apart."""
    return f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(directory: Path) -> list[str]:
    """Remove temp entries in `directory` whose creating process is gone; return their names."""
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            pid = int(entry.name[len(TEMP_PREFIX):].split("-", 1)[0])
        except ValueError:
            pid = -1
        # Our own pid's temps may belong to another thread's unpack in progress: leave them.
        if pid == os.getpid() or (pid > 0 and pid_alive(pid)):
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            try:
                os.unlink(entry.path)
            except OSError:
                continue  # gone already, or a read-only store: leftovers are invisible anyway
        removed.append(entry.name)
    return removed


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` to `path` so readers see either the old or the new file, never a partial one."""
    tmp = tmp_dir / new_temp_name()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirs, files in os.walk(path):
        for n in dirs + files:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_blocks * 512
            except OSError:
                continue
    return total


def overlay_lowerdirs() -> set[str]:
    """Directories used as overlay lowerdirs by mounts visible to this process."""
    dirs: set[str] = set()
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                if " - overlay " not in line:
                    continue
                for opt in line.rsplit(" ", 1)[-1].strip().split(","):
                    key, _, value = opt.partition("=")
                    if key == "lowerdir":
                        paths = value.split(":")
                    elif key in ("lowerdir+", "datadir+"):
                        paths = [value]
                    else:
                        continue
                    dirs.update(os.path.realpath(_unescape_mountinfo(p)) for p in paths if p)
    except OSError:
        pass
    return dirs


def _unescape_mountinfo(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)

