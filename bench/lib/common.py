"""Statistics, interleaved timing, host facts and cgroup/mount cleanup for the benchmarks."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any


# -- statistics ---------------------------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 1]."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summary(values: Sequence[float], digits: int = 2) -> dict[str, Any]:
    """n, min, median, p90, max, mean of `values` (rounded), or just n=0."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "median": round(percentile(values, 0.5), digits),
        "p90": round(percentile(values, 0.9), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


def ratio(a: float | None, b: float | None, digits: int = 3) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, digits)


# -- interleaved timing -------------------------------------------------------------------------------------
class Contestant:
    """One thing to time: fn() runs it once and raises on failure (a non-zero exit, a wrong result)."""

    def __init__(self, name: str, fn: Callable[[], None]) -> None:
        self.name = name
        self.fn = fn
        self.samples_ms: list[float] = []
        self.error: str | None = None

    def once(self) -> float:
        t0 = time.perf_counter()
        self.fn()
        return (time.perf_counter() - t0) * 1000.0

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = summary(self.samples_ms)
        out["unit"] = "ms"
        out["raw"] = [round(x, 2) for x in self.samples_ms]
        if self.error:
            out["error"] = self.error
        return out


def interleaved(contestants: list[Contestant], runs: int, log: Callable[[str], None]) -> None:
    """A warm-up run of each, then `runs` rounds A, B, C, A, B, C ...; a contestant that fails drops out
    (its error is kept), the others go on."""
    for c in contestants:
        try:
            ms = c.once()
            log(f"  warm-up {c.name}: {ms:.1f} ms")
        except Exception as exc:  # noqa: BLE001 - recorded, the others go on
            c.error = f"warm-up: {describe(exc)}"
            log(f"  {c.name} FAILED in warm-up: {c.error}")
    for i in range(runs):
        for c in contestants:
            if c.error:
                continue
            try:
                c.samples_ms.append(c.once())
            except Exception as exc:  # noqa: BLE001
                c.error = f"run {i + 1}: {describe(exc)}"
                log(f"  {c.name} FAILED: {c.error}")
        if (i + 1) % 10 == 0 or i + 1 == runs:
            live = [c for c in contestants if c.samples_ms]
            log(f"  {i + 1}/{runs}: " + ", ".join(
                f"{c.name} {percentile(c.samples_ms, 0.5):.1f} ms" for c in live))


def describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 2000 else text[:2000] + " ..."


def check_run(argv: list[str], *, timeout: float = 120, env: dict[str, str] | None = None,
              ok_codes: tuple[int, ...] = (0,)) -> str:
    """Run argv quietly; raise with its stderr when it fails. Returns its stdout."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)
    if proc.returncode not in ok_codes:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
        raise RuntimeError(f"`{' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}` exited {proc.returncode}: {tail}")
    return proc.stdout


# -- host facts ---------------------------------------------------------------------------------------------
def _first_line(argv: list[str]) -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else None


def cgroup_mode() -> str:
    """v2, hybrid or v1, from what this mount namespace has mounted."""
    types = {fstype for mp, fstype in mountinfo() if mp.startswith("/sys/fs/cgroup")}
    if "cgroup2" in types and "cgroup" in types:
        return "hybrid (v1 controllers, v2 unified)"
    return "v2" if "cgroup2" in types else "v1"


def host_facts(tools: dict[str, list[str]], cgroups: str | None = None) -> dict[str, Any]:
    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), None)
    except OSError:
        pass
    mem_kib = None
    try:
        with open("/proc/meminfo") as f:
            mem_kib = next((int(ln.split()[1]) for ln in f if ln.startswith("MemTotal:")), None)
    except OSError:
        pass
    os_name = None
    try:
        with open("/etc/os-release") as f:
            os_name = next((ln.split("=", 1)[1].strip().strip('"') for ln in f if ln.startswith("PRETTY_NAME=")),
                           None)
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "os": os_name,
        "cpu_model": cpu,
        "cpus": os.cpu_count(),
        "mem_total_mib": mem_kib // 1024 if mem_kib else None,
        "cgroups": cgroups or cgroup_mode(),
        "python": platform.python_version(),
        "versions": {name: _first_line(argv) for name, argv in tools.items()},
    }


# -- cleanup ------------------------------------------------------------------------------------------------
def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mountinfo() -> list[tuple[str, str]]:
    """(mount point, fs type) of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            out.append((_unescape(left.split()[4]), right.split()[0]))
    return out


def unmount_under(path: str) -> list[str]:
    """Lazily unmount everything mounted at or below `path`, deepest first. Returns what it unmounted."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    MNT_DETACH = 2
    prefix = os.path.abspath(path).rstrip("/") + "/"
    done = []
    for _ in range(5):  # a mount can hide another one below it
        points = sorted({mp for mp, _ in mountinfo() if (mp + "/").startswith(prefix)},
                        key=lambda p: p.count("/"), reverse=True)
        if not points:
            break
        for mp in points:
            if libc.umount2(mp.encode(), MNT_DETACH) == 0:
                done.append(mp)
    return done


def cgroup_roots() -> list[str]:
    return sorted({mp for mp, fstype in mountinfo() if fstype in ("cgroup", "cgroup2")})


def remove_cgroup_tree(rel: str) -> list[str]:
    """rmdir the cgroup `rel` (e.g. "/vkbench-ab12") and everything below it in every hierarchy, leaves first.
    Returns the directories that could not be removed (still holding processes)."""
    left = []
    for root in cgroup_roots():
        top = os.path.join(root, rel.lstrip("/"))
        if not os.path.isdir(top):
            continue
        dirs = [dp for dp, _, _ in os.walk(top)]
        for d in sorted(dirs, key=lambda p: p.count("/"), reverse=True):
            for attempt in range(20):
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if attempt == 19:
                        left.append(d)
                    else:
                        time.sleep(0.05)
    return left


def cgroups_present(rel: str) -> list[str]:
    return [os.path.join(r, rel.lstrip("/")) for r in cgroup_roots() if os.path.isdir(os.path.join(r, rel.lstrip("/")))]


def unified_controllers() -> list[str]:
    try:
        with open("/sys/fs/cgroup/unified/cgroup.controllers") as f:
            return f.read().split()
    except OSError:
        return []


def hide_unified_hierarchy() -> None:
    """Move this process into a private mount namespace without /sys/fs/cgroup/unified, so that it and
    everything it starts sees cgroup v1 only. The host's mounts are untouched."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH = 0x00020000, 0x4000, 0x40000, 2
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "mount --make-rprivate /")
    if libc.umount2(b"/sys/fs/cgroup/unified", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount /sys/fs/cgroup/unified")
