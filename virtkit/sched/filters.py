"""Host filters: each answers None (the host passes) or why the host cannot take the request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from virtkit.sched.model import HostState, Request

if TYPE_CHECKING:
    from virtkit.sched.engine import Scheduler


def instance_type(s: Scheduler, h: HostState, req: Request, d: list[float]) -> str | None:
    if h.types is not None and req.instance_type not in h.types:
        return f"instance type {req.instance_type!r} not allowed (host takes {', '.join(sorted(h.types))})"
    return None


def labels(s: Scheduler, h: HostState, req: Request, d: list[float]) -> str | None:
    for k, v in req.labels.items():
        have = h.labels.get(k)
        if have != v:
            return f"label {k}={v} wanted, host has {k}={have}" if have is not None else f"label {k}={v} missing"
    return None


def groups(s: Scheduler, h: HostState, req: Request, d: list[float]) -> str | None:
    for g in req.groups:
        grp = s.groups[g]
        if not grp.hard:
            continue
        if grp.scope == "host":
            here = s.group_hosts[g].get(h.index, 0)
        else:
            here = s.group_zones[g].get(h.zone, 0)
        if grp.policy == "anti-affinity" and here:
            return f"hard anti-affinity: group {g!r} already has {here} member(s) on this {grp.scope}"
        if grp.policy == "affinity" and not here and s.group_size(g):
            return f"hard affinity: group {g!r} runs on another {grp.scope}"
    return None


def capacity(s: Scheduler, h: HostState, req: Request, d: list[float]) -> str | None:
    short = h.shortfall(d)
    if not short:
        return None
    parts = []
    for i, miss in short:
        r = s.resources[i]
        parts.append(f"{r} short by {miss:g} (needs {d[i]:g}, free {h.cap[i] - h.used[i]:g} of {h.cap[i]:g})")
    return "; ".join(parts)


# Cheap, selective filters first; capacity last so that explain names the policy reason when there is one.
FILTERS = (("instance_type", instance_type), ("labels", labels), ("groups", groups), ("capacity", capacity))
