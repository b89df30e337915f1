"""The scheduler over JSON (what virtkitd's /v1/sched routes serve): parse a pool and a trace, place, explain.

Body: {"hosts": [{"name", "capacity": {resource: amount}, "labels": {k: v}}],
       "requests": [{"id", "demand": {resource: amount}, "priority", "labels", "groups": [names], "project",
                     "instance_type", "arrival", "departure"}],
       "policy": "virtkit", "batch": false, "ratios": {resource: ratio}, "seed": 0,
       "groups": [{"name", "policy": "affinity" | "anti-affinity", "hard": true, "scope": "host" | "zone"}],
       "quotas": {project: {resource or "instances": limit}}}
Only hosts, requests and (for explain) id are required. Requests with `arrival` (all or none of them) are
replayed in time with their departures, as `virtkit-sched place` does with arrival_s; without, in list order.
Ratios default to Nova's (vcpus 4.0, memory_mib 1.0), unlike the replay command's 1.0.
Every error is a SchedError (HTTP 400) whose message starts with the field's path, e.g. `requests[3].demand.vcpus`.
"""

from __future__ import annotations

import math
from typing import Any

from virtkit.sched.engine import INSTANCES, Scheduler
from virtkit.sched.explain import explain as explain_state
from virtkit.sched.model import DEFAULT_RATIOS, Group, Host, Request, SchedError
from virtkit.sched.policies import POLICIES
from virtkit.sched.replay import replay

MAX_HOSTS = 100_000
MAX_REQUESTS = 200_000
BODY_KEYS = {"hosts", "requests", "policy", "batch", "ratios", "seed", "groups", "quotas", "id"}
HOST_KEYS = {"name", "capacity", "labels"}
REQUEST_KEYS = {"id", "demand", "priority", "labels", "groups", "project", "instance_type", "arrival", "departure"}
GROUP_KEYS = {"name", "policy", "hard", "scope"}
REQUIRED = ("vcpus", "memory_mib")  # in every host's capacity and every request's demand


def _obj(v: Any, where: str, known: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise SchedError(f"{where}: must be an object, got {_kind(v)}")
    if known is not None:
        extra = sorted(k for k in v if k not in known)
        if extra:
            raise SchedError(f"{where}.{extra[0]}: unknown field (known: {', '.join(sorted(known))})")
    return v


def _list(v: Any, where: str, limit: int | None = None) -> list[Any]:
    if not isinstance(v, list):
        raise SchedError(f"{where}: must be a list, got {_kind(v)}")
    if limit is not None and len(v) > limit:
        raise SchedError(f"{where}: at most {limit} entries per call, got {len(v)}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise SchedError(f"{where}: must be a non-empty string, got {_kind(v)}")
    return v


def _num(v: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise SchedError(f"{where}: must be a finite number, got {_kind(v)}")
    if v < 0 or (positive and v == 0):
        raise SchedError(f"{where}: must be {'positive' if positive else 'zero or more'}, got {v:g}")
    return float(v)


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise SchedError(f"{where}: must be true or false, got {_kind(v)}")
    return v


def _kind(v: Any) -> str:
    return {type(None): "null", bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(
        type(v), repr(v) if isinstance(v, (int, float)) else type(v).__name__)


def _amounts(v: Any, where: str, required: tuple[str, ...] = ()) -> dict[str, float]:
    out = {_str(k, f"{where} key"): _num(x, f"{where}.{k}") for k, x in _obj(v, where).items()}
    for r in required:
        if r not in out:
            raise SchedError(f"{where}.{r}: missing")
    return out


def _labels(v: Any, where: str) -> dict[str, str]:
    out = {}
    for k, x in _obj(v, where).items():
        if not isinstance(x, str):
            raise SchedError(f"{where}.{k}: must be a string, got {_kind(x)}")
        out[k] = x
    return out


def _host(v: Any, where: str) -> Host:
    o = _obj(v, where, HOST_KEYS)
    if "capacity" not in o:
        raise SchedError(f"{where}.capacity: missing")
    cap = _amounts(o["capacity"], f"{where}.capacity", REQUIRED)
    return Host(_str(o.get("name"), f"{where}.name"), cap, _labels(o.get("labels", {}), f"{where}.labels"))


def _request(v: Any, where: str, groups: dict[str, Group]) -> Request:
    o = _obj(v, where, REQUEST_KEYS)
    if "demand" not in o:
        raise SchedError(f"{where}.demand: missing")
    demand = _amounts(o["demand"], f"{where}.demand", REQUIRED)
    prio = o.get("priority", 0)
    if isinstance(prio, bool) or not isinstance(prio, int):
        raise SchedError(f"{where}.priority: must be a whole number, got {_kind(prio)}")
    names = [_str(g, f"{where}.groups[{i}]") for i, g in enumerate(_list(o.get("groups", []), f"{where}.groups"))]
    for i, g in enumerate(names):
        if g not in groups:
            raise SchedError(f"{where}.groups[{i}]: unknown group {g!r} (declare it in groups)")
    opt = {k: (_str(o[k], f"{where}.{k}") if o.get(k) is not None else None) for k in ("project", "instance_type")}
    arrival = _num(o["arrival"], f"{where}.arrival") if o.get("arrival") is not None else None
    departure = _num(o["departure"], f"{where}.departure") if o.get("departure") is not None else None
    if arrival is not None and departure is not None and departure < arrival:
        raise SchedError(f"{where}.departure: {departure:g} is before arrival {arrival:g}")
    return Request(_str(o.get("id"), f"{where}.id"), demand, prio,
                   _labels(o.get("labels", {}), f"{where}.labels"), tuple(names), opt["project"],
                   opt["instance_type"], arrival, departure)


def _group(v: Any, where: str) -> Group:
    o = _obj(v, where, GROUP_KEYS)
    name = _str(o.get("name"), f"{where}.name")
    policy = o.get("policy", "anti-affinity")
    if policy not in ("affinity", "anti-affinity"):
        raise SchedError(f"{where}.policy: must be affinity or anti-affinity, got {policy!r}")
    scope = o.get("scope", "host")
    if scope not in ("host", "zone"):
        raise SchedError(f"{where}.scope: must be host or zone, got {scope!r}")
    return Group(name, policy, _bool(o.get("hard", True), f"{where}.hard"), scope)


def parse(body: Any) -> tuple[Scheduler, list[Request], bool, bool]:
    """(scheduler over the pool, requests in the given order, timed, batch) from a request body."""
    b = _obj(body, "body", BODY_KEYS)
    for key in ("hosts", "requests"):
        if key not in b:
            raise SchedError(f"{key}: missing (a list of {key})")
    groups: dict[str, Group] = {}
    for i, g in enumerate(_list(b.get("groups", []), "groups")):
        grp = _group(g, f"groups[{i}]")
        if grp.name in groups:
            raise SchedError(f"groups[{i}].name: duplicate group {grp.name!r}")
        groups[grp.name] = grp
    hosts = [_host(h, f"hosts[{i}]") for i, h in enumerate(_list(b["hosts"], "hosts", MAX_HOSTS))]
    reqs = [_request(r, f"requests[{i}]", groups)
            for i, r in enumerate(_list(b["requests"], "requests", MAX_REQUESTS))]
    seen: dict[str, int] = {}
    for i, r in enumerate(reqs):
        if r.id in seen:
            raise SchedError(f"requests[{i}].id: duplicate id {r.id!r} (first at requests[{seen[r.id]}])")
        seen[r.id] = i
    timed = any(r.arrival is not None for r in reqs)
    untimed = [i for i, r in enumerate(reqs) if r.arrival is None]
    if timed and untimed:
        raise SchedError(f"requests[{untimed[0]}].arrival: missing (give every request an arrival, or none)")
    policy = b.get("policy", "virtkit")
    if not isinstance(policy, str) or policy not in POLICIES:
        raise SchedError(f"policy: unknown policy {policy!r} (choose from {', '.join(POLICIES)})")
    ratios = dict(DEFAULT_RATIOS)
    ratios.update({k: _num(v, f"ratios.{k}", positive=True) for k, v in _obj(b.get("ratios", {}), "ratios").items()})
    quotas = {_str(p, "quotas key"): _amounts(q, f"quotas.{p}")
              for p, q in _obj(b.get("quotas", {}), "quotas").items()}
    for p, q in quotas.items():
        if q.get(INSTANCES, 0) != int(q.get(INSTANCES, 0)):
            raise SchedError(f"quotas.{p}.{INSTANCES}: must be a whole number, got {q[INSTANCES]:g}")
    seed = b.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SchedError(f"seed: must be a whole number, got {_kind(seed)}")
    names: dict[str, int] = {}
    for i, h in enumerate(hosts):
        if names.setdefault(h.name, i) != i:
            raise SchedError(f"hosts[{i}].name: duplicate host {h.name!r} (first at hosts[{names[h.name]}])")
    try:
        s = Scheduler(hosts, policy, ratios=ratios, groups=list(groups.values()), quotas=quotas, seed=seed)
    except SchedError as e:  # the quotas name a resource no host has
        raise SchedError(f"quotas: {e.message}") from None
    for i, r in enumerate(reqs):
        unknown = sorted(k for k in r.demand if k not in s.resources)
        if unknown:
            raise SchedError(f"requests[{i}].demand.{unknown[0]}: unknown resource (the hosts have "
                             f"{', '.join(s.resources)})")
    return s, reqs, timed, _bool(b.get("batch", False), "batch")


def place(body: Any) -> dict[str, Any]:
    """Every request's host (null: rejected, over quota, or evicted by a higher priority), in request order."""
    s, reqs, timed, batch = parse(body)
    reasons: dict[str, str] = {}
    result = replay(s, reqs, timed=timed, batch=batch, reasons=reasons)
    placements = [{"id": r.id, "host": result[r.id], **({"reason": reasons[r.id]} if r.id in reasons else {})}
                  for r in reqs]
    return {"policy": s.policy.name, "timed": timed, "batch": batch, "ratios": s.ratios,
            "placed": sum(1 for p in placements if p["host"] is not None),
            "rejected": sum(1 for p in placements if p["host"] is None), "placements": placements}


def explain(body: Any) -> dict[str, Any]:
    """Why request `id` goes where it goes, in the state it meets: the trace replayed up to just before it."""
    rid = _str(_obj(body, "body").get("id"), "id")
    s, reqs, timed, batch = parse(body)
    target = next((r for r in reqs if r.id == rid), None)
    if target is None:
        raise SchedError(f"id: no request with id {rid!r} in requests")
    replay(s, reqs, timed=timed, batch=batch, stop_before=rid)
    return explain_state(s, target)
