"""Replaying a request trace through the engine: online in file order, or arrivals and departures in time."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from itertools import groupby

from virtkit.sched.engine import Decision, Scheduler
from virtkit.sched.model import Request


def replay(
    s: Scheduler,
    reqs: list[Request],
    *,
    timed: bool,
    batch: bool = False,
    stop_before: str | None = None,
    observe: Callable[[float, Scheduler], None] | None = None,
    reasons: dict[str, str] | None = None,
) -> dict[str, str | None]:
    """Place every request; answers id -> host (None: rejected, or evicted by preemption before its end).

    Timed: departures at time t are processed before arrivals at t (except those of requests that arrived
    at t too: a zero-length request holds its capacity until the next time, so a checker that counts it at
    its instant finds no excess either); requests arriving at the same time form one batch when batch=True.
    Untimed: one batch of everything, or file order.
    stop_before: stop just before placing that request (explain replays the state it would meet).
    observe(t, s) is called after each group of arrivals (the benchmark samples state with it).
    reasons, when given, gets why each request was rejected or preempted, and how each placement preempted.
    """
    result: dict[str, str | None] = {r.id: None for r in reqs}
    seq = {r.id: i for i, r in enumerate(reqs)}
    if not timed:
        groups: list[tuple[float, list[Request]]] = [(0.0, reqs)] if batch else [(0.0, [r]) for r in reqs]
    else:
        order = sorted(reqs, key=lambda r: (r.arrival or 0.0, seq[r.id]))
        if batch:
            groups = [(t, list(g)) for t, g in groupby(order, key=lambda r: r.arrival or 0.0)]
        else:
            groups = [(r.arrival or 0.0, [r]) for r in order]
    departures: list[tuple[float, bool, int, str]] = []  # (time, zero-length, file order, id)
    for t, group in groups:
        while departures and (departures[0][0] < t or departures[0][0] == t and not departures[0][1]):
            rid = heapq.heappop(departures)[3]
            if rid in s.where:
                s.release(rid)
        if stop_before is not None:
            ids = [r.id for r in group]
            if stop_before in ids:
                for r in group[: ids.index(stop_before)]:
                    _record(s, s.schedule(r), result, departures, seq, timed, reasons)
                return result
        for d in s.place_batch(group) if len(group) > 1 else [s.schedule(group[0])]:
            _record(s, d, result, departures, seq, timed, reasons)
        if observe is not None:
            observe(t, s)
    return result


def _record(s: Scheduler, d: Decision, result: dict[str, str | None],
            departures: list[tuple[float, bool, int, str]], seq: dict[str, int], timed: bool,
            reasons: dict[str, str] | None) -> None:
    result[d.request_id] = d.host
    for v in d.victims:
        result[v] = None
        if reasons is not None:
            reasons[v] = f"preempted by {d.request_id!r}, of higher priority"
    if reasons is not None and d.reason:
        reasons[d.request_id] = d.reason
    if d.host is not None and timed:
        r = s.where[d.request_id].residents[d.request_id]
        if r.departure is not None:
            heapq.heappush(departures, (r.departure, r.departure == r.arrival, seq[d.request_id], d.request_id))
