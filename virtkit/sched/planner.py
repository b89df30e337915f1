"""Rebalancing plans: consolidation (empty hosts with few moves) and draining one host.

Plans are computed by applying moves to the live scheduler state and undoing them before returning,
so every move of a plan is feasible in order (capacity, labels, groups) at the moment it runs.
No ping-pong: a request moves at most once, and a host being emptied never receives.
"""

from __future__ import annotations

from dataclasses import dataclass

from virtkit.sched.engine import Scheduler
from virtkit.sched.model import HostState, SchedError
from virtkit.sched.policies import Virtkit


@dataclass(slots=True, frozen=True)
class Move:
    request_id: str
    source: str
    target: str


def _load(s: Scheduler, h: HostState) -> float:
    return sum(u / c for u, c in zip(h.used[:2], h.cap[:2], strict=True) if c > 0)


def _empty_host(s: Scheduler, h: HostState, closed: set[int], moved: set[str],
                nonempty_only: bool) -> list[Move] | None:
    """Move every resident of h elsewhere (not into closed hosts); on failure undo and answer None."""
    done: list[Move] = []
    residents = sorted(h.residents.values(), key=lambda r: -sum(s.vector(r)[:2]))
    for req in residents:
        d = s.vector(req)
        s.release(req.id, moving=True)
        cands = s.candidates(req, d, exclude=closed | {h.index}, nonempty_only=nonempty_only)
        if not cands:
            s.bind(req, h, d)
            for m in reversed(done):
                _undo(s, m)
            return None
        t = s.best(cands, req, d)
        s.bind(req, t, d)
        done.append(Move(req.id, h.name, t.name))
    moved.update(m.request_id for m in done)
    return done


def _undo(s: Scheduler, m: Move) -> None:
    req = s.by_name[m.target].residents[m.request_id]
    s.release(m.request_id, moving=True)
    s.bind(req, s.by_name[m.source])


def repack(s: Scheduler, candidates: list[HostState], movable: set[str]) -> dict[str, str]:
    """Try to empty each candidate host (lightest first) into the other open hosts; keeps what works.

    Used by batch placement: the batch's own requests are not running yet, so moving them costs nothing.
    """
    closed: set[int] = set()
    moved: set[str] = set()
    out: dict[str, str] = {}
    for h in sorted(candidates, key=lambda h: _load(s, h)):
        if h.empty or not set(h.residents) <= movable:
            continue
        closed.add(h.index)
        moves = _empty_host(s, h, closed, moved, nonempty_only=True)
        if moves is None:
            closed.discard(h.index)
            continue
        for m in moves:
            out[m.request_id] = m.target
    return out


def plan_consolidation(s: Scheduler, max_moves: int = 50, max_moves_per_host: int = 8) -> list[Move]:
    """Moves that empty as many hosts as possible, lightest hosts first, within the move budgets."""
    plan: list[Move] = []
    closed: set[int] = set()
    moved: set[str] = set()
    policy, s.policy = s.policy, Virtkit(churn=1.0)  # targets: the tightest fit, whatever the policy
    try:
        for h in sorted((h for h in s.hosts if not h.empty), key=lambda h: _load(s, h)):
            n = len(h.residents)
            if h.empty or n > max_moves_per_host or len(plan) + n > max_moves or moved & set(h.residents):
                continue
            closed.add(h.index)
            moves = _empty_host(s, h, closed, moved, nonempty_only=True)
            if moves is None:
                closed.discard(h.index)
                continue
            plan.extend(moves)
    finally:
        s.policy = policy
        for m in reversed(plan):
            _undo(s, m)
    return plan


def plan_drain(s: Scheduler, host: str) -> list[Move]:
    """Moves that empty `host` (for maintenance); raises SchedError naming a request that fits nowhere."""
    h = s.by_name.get(host)
    if h is None:
        raise SchedError(f"unknown host {host!r}")
    plan: list[Move] = []
    try:
        for req in sorted(h.residents.values(), key=lambda r: -sum(s.vector(r)[:2])):
            d = s.vector(req)
            s.release(req.id, moving=True)
            cands = s.candidates(req, d, exclude={h.index})
            s.bind(req, h, d)
            if not cands:
                raise SchedError(f"cannot drain {host!r}: request {req.id!r} fits on no other host")
            t = s.best(cands, req, d)
            s.release(req.id, moving=True)
            s.bind(req, t, d)
            plan.append(Move(req.id, host, t.name))
    finally:
        for m in reversed(plan):
            _undo(s, m)
    return plan
