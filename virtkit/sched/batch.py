"""Batch placement: many requests at once.

Baseline policies sort (priority, then the biggest dominant share first) and place one by one, which makes
first fit into first-fit decreasing. The `virtkit` policy instead asks how few empty hosts the batch needs:
for k = a volume lower bound upward (galloping, then bisection) it spreads the sorted requests over the open
hosts plus k empty ones, each to the host whose free capacity has the most similar shape (cosine), or the
least loaded one, or the best dot product — a small portfolio — and keeps the smallest k that takes all.
Filling k hosts side by side keeps every host's remainder in the shape of what is still to come, which is
what first-fit decreasing gets wrong with two resources. Requests with constraints (groups, labels, types,
quotas) or a priority above the batch's lowest go first, one by one, through the normal path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from virtkit.sched.model import HostState, Request

if TYPE_CHECKING:
    from virtkit.sched.engine import Decision, Scheduler

MAX_OPEN_HOSTS = 3000  # above this many open hosts, fall back to sorted one-by-one placement
WORK_BUDGET = 3_000_000  # host checks spent on trying other orders for one host fewer


def _plain(s: Scheduler, r: Request) -> bool:
    quota = r.project is not None and r.project in s.quotas
    return not (r.groups or r.labels or r.instance_type is not None or quota)


def _cosine(h: HostState, d: list[float]) -> float:
    c0, c1 = h.cap[0], h.cap[1]
    r0, r1 = (c0 - h.used[0]) / c0 if c0 else 0.0, (c1 - h.used[1]) / c1 if c1 else 0.0
    d0, d1 = d[0] / c0 if c0 else 0.0, d[1] / c1 if c1 else 0.0
    return (r0 * d0 + r1 * d1) / ((math.hypot(r0, r1) * math.hypot(d0, d1)) or 1e-12)


def _least(h: HostState, d: list[float]) -> float:
    u0 = (h.used[0] + d[0]) / h.cap[0] if h.cap[0] else 1.0
    u1 = (h.used[1] + d[1]) / h.cap[1] if h.cap[1] else 1.0
    return -(u0 + u1) - abs(u0 - u1)


def _dot(h: HostState, d: list[float]) -> float:
    return sum(d[k] / h.cap[k] * (h.cap[k] - h.used[k]) / h.cap[k] for k in (0, 1) if h.cap[k])


SCORERS: tuple[Callable[[HostState, list[float]], float], ...] = (_cosine, _least, _dot)


def _other_orders(s: Scheduler, items: list[tuple[Request, list[float]]]) -> list[list[tuple[Request, list[float]]]]:
    ref = [max((h.cap[i] for h in s.hosts), default=0.0) or 1.0 for i in range(len(s.resources))]
    n = len(ref)
    keys = [lambda d: -sum(d[i] / ref[i] for i in range(n)), lambda d: (-d[0] / ref[0], -d[1] / ref[1]),
            lambda d: (-d[1] / ref[1], -d[0] / ref[0])]
    return [sorted(items, key=lambda it, k=k: k(it[1])) for k in keys]  # type: ignore[misc]


def _try(s: Scheduler, reqs: list[tuple[Request, list[float]]], hosts: list[HostState],
         score: Callable[[HostState, list[float]], float], keep: bool) -> bool:
    placed: list[str] = []
    ok = True
    for r, d in reqs:
        best, best_score = None, 0.0
        for h in hosts:
            if h.fits(d):
                sc = score(h, d)
                if best is None or sc > best_score:
                    best, best_score = h, sc
        if best is None:
            ok = False
            if keep:
                continue
            break
        s.bind(r, best, d)
        placed.append(r.id)
    if not keep:
        for rid in placed:
            s.release(rid, moving=True)
    return ok


def fill_hosts(s: Scheduler, reqs: list[Request]) -> dict[str, Decision]:
    from virtkit.sched.engine import Decision

    out: dict[str, Decision] = {}
    low = min((r.priority for r in reqs), default=0)
    plain = [r for r in reqs if _plain(s, r) and r.priority == low]
    plain_ids = {r.id for r in plain}
    for r in s.batch_order([r for r in reqs if r.id not in plain_ids]):
        out[r.id] = s.schedule(r)
    opened = [h for h in s.hosts if not h.empty]
    if not plain:
        return out
    if len(opened) > MAX_OPEN_HOSTS:
        for r in s.batch_order(plain):
            out[r.id] = s.schedule(r)
        return out
    items = [(r, s.vector(r)) for r in s.batch_order(plain)]
    empties = [h for h in s.hosts if h.empty]
    ref = empties[0] if empties else (s.add_host(s.grow(len(s.hosts))) if s.grow else None)
    if ref is not None and ref not in empties:
        empties.append(ref)
    k_lo = 0
    if ref is not None:  # volume bound on the empty hosts the batch needs
        for i in (0, 1):
            need = sum(d[i] for _, d in items) - sum(h.cap[i] - h.used[i] for h in opened)
            if ref.cap[i] > 0 and need > 0:
                k_lo = max(k_lo, math.ceil(need / ref.cap[i] - 1e-9))

    def empties_upto(k: int) -> list[HostState] | None:
        while len(empties) < k and s.grow is not None:
            empties.append(s.add_host(s.grow(len(s.hosts))))
        return empties[:k] if len(empties) >= k else None

    def feasible(k: int) -> Callable[[HostState, list[float]], float] | None:
        hosts = empties_upto(k)
        if hosts is None:
            return None
        for sc in SCORERS:
            if _try(s, items, opened + hosts, sc, keep=False):
                return sc
        return None

    limit = len(empties) if s.grow is None else k_lo + len(items)
    k_lo = min(k_lo, limit)
    found: tuple[int, Callable[[HostState, list[float]], float]] | None = None
    step, k, bad = 1, k_lo, k_lo - 1
    while k <= limit:
        sc = feasible(k)
        if sc is not None:
            found = (k, sc)
            break
        bad, k, step = k, min(limit, k + step), step * 2
        if bad == limit:
            break
    if found is not None:
        lo, hi = bad, found[0]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            sc = feasible(mid)
            if sc is not None:
                hi, found = mid, (mid, sc)
            else:
                lo = mid
        best_items = items
        # one host fewer with other orders (sum of shares, each resource alone), within a work budget
        budget = WORK_BUDGET
        for order in _other_orders(s, items):
            k = found[0] - 1
            if k < k_lo or budget <= 0:
                break
            hosts = empties_upto(k) or []
            for sc in SCORERS:
                budget -= len(items) * (len(opened) + len(hosts))
                if _try(s, order, opened + hosts, sc, keep=False):
                    found, best_items = (k, sc), order
                    break
        hosts = empties_upto(found[0]) or []
        _try(s, best_items, opened + hosts, found[1], keep=True)
    else:
        _try(s, items, opened + empties, _least, keep=True)
    for r, _ in items:
        h = s.where.get(r.id)
        if h is not None:
            out[r.id] = Decision(r.id, h.name)
            s.count_arrival()
        else:
            out[r.id] = s.schedule(r)
    return out
