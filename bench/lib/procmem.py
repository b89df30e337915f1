"""Process memory: PSS/RSS/USS from /proc/PID/smaps_rollup, process trees, cgroup membership."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any


def mem_of(pid: int) -> dict[str, int] | None:
    """Pss, Rss and Uss (Private_Clean + Private_Dirty) of `pid` in KiB; None if it is gone or a kernel thread."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            fields = {}
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                    fields[parts[0][:-1]] = int(parts[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if "Pss" not in fields:
        return None
    return {"pss": fields["Pss"], "rss": fields.get("Rss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def comm_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return "?"


def cmdline_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def ppids() -> dict[int, int]:
    """pid -> ppid for every process now."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the comm field may hold spaces and parentheses: the ppid is the 2nd field after the last ')'
        out[int(name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def descendants(roots: Iterable[int], tree: dict[int, int] | None = None) -> set[int]:
    """Every process below `roots` (not the roots themselves)."""
    tree = tree if tree is not None else ppids()
    children: dict[int, list[int]] = {}
    for pid, ppid in tree.items():
        children.setdefault(ppid, []).append(pid)
    out: set[int] = set()
    todo = list(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def in_cgroup(fragment: str) -> set[int]:
    """Processes whose /proc/PID/cgroup names a path containing `fragment` in any hierarchy."""
    out = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cgroup") as f:
                if fragment in f.read():
                    out.add(int(name))
        except OSError:
            continue
    return out


def total(pids: Iterable[int]) -> dict[str, Any]:
    """Summed pss/rss/uss (KiB) of `pids`, with the process count and a count by command name."""
    acc = {"pss": 0, "rss": 0, "uss": 0}
    n = 0
    by_comm: dict[str, int] = {}
    for pid in pids:
        m = mem_of(pid)
        if m is None:
            continue
        n += 1
        for k in acc:
            acc[k] += m[k]
        c = comm_of(pid)
        by_comm[c] = by_comm.get(c, 0) + 1
    return {"processes": n, "pss_kib": acc["pss"], "rss_kib": acc["rss"], "uss_kib": acc["uss"],
            "by_command": dict(sorted(by_comm.items()))}
