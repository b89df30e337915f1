"""The placement engine: filter -> score -> bind over an incremental free-capacity index.

Hosts sit in buckets keyed by their free primary resource (whole vCPUs) and the power of two of their free
memory, so that buckets too small in either are skipped without reading their hosts; a decision reads buckets in the
order its policy prefers (tightest fit first, or emptiest first) and scores at most `max_candidates`
feasible hosts, so it does not scan every host of a large pool. Binding, releasing, batch placement,
preemption, quotas (per project: resources and instance count) and the churn estimate the `virtkit` policy
blends on (departures per arrival lately; moves are neither) live here; explanations in `explain.py`,
move plans in `planner.py`.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from virtkit.sched import filters
from virtkit.sched.model import DEFAULT_RATIOS, DEFAULT_RESOURCES, EPS, Group, Host, HostState, Request, SchedError
from virtkit.sched.policies import Policy, make_policy

SOFT_GROUP_WEIGHT = 1000.0
CHURN_WINDOW = 5000  # arrivals; the churn estimate halves its counts past twice this many
INSTANCES = "instances"  # the quota on how many instances a project runs


def _log2(x: float) -> int:
    """The bucket of a free amount: floor(log2(x)) for x >= 1, else 0 (demands below 1 need bucket 0)."""
    return int(x + EPS).bit_length() - 1 if x >= 1 - EPS else 0


@dataclass(slots=True)
class Decision:
    request_id: str
    host: str | None
    reason: str = ""
    victims: list[str] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        hosts: Iterable[Host],
        policy: str | Policy = "virtkit",
        *,
        resources: tuple[str, ...] | None = None,
        ratios: dict[str, float] | None = None,
        groups: Iterable[Group] = (),
        quotas: dict[str, dict[str, float]] | None = None,
        max_candidates: int | None = 64,
        preemption: bool = True,
        seed: int = 0,
        grow: Callable[[int], Host] | None = None,
    ) -> None:
        hosts = list(hosts)
        res = list(resources or DEFAULT_RESOURCES)
        for h in hosts:
            res.extend(r for r in h.capacity if r not in res)
        self.resources = tuple(res)
        self.ratios = dict(DEFAULT_RATIOS if ratios is None else ratios)
        self.policy = make_policy(policy) if isinstance(policy, str) else policy
        self.max_candidates = max_candidates or 1 << 30
        self.preemption = preemption
        self.rng = random.Random(seed)
        self.grow = grow
        self.hosts: list[HostState] = []
        self.by_name: dict[str, HostState] = {}
        self._buckets: dict[tuple[int, int], dict[int, None]] = {}
        self._keys: list[tuple[int, int]] = []
        # pool totals for the policy (kept as hosts come and requests are bound and released)
        self.pool_used = [0.0] * len(self.resources)
        self.pool_cap = [0.0] * len(self.resources)
        self.pool_max = [0.0] * len(self.resources)
        for h in hosts:
            self.add_host(h)
        self.groups: dict[str, Group] = {g.name: g for g in groups}
        self.group_hosts: dict[str, dict[int, int]] = {g: {} for g in self.groups}
        self.group_zones: dict[str, dict[str, int]] = {g: {} for g in self.groups}
        self.quotas = self._check_quotas(quotas or {})
        self.project_use: dict[str, list[float]] = {}
        self.project_count: dict[str, int] = {}
        self.where: dict[str, HostState] = {}
        # churn: instances that left per instance placed, over roughly the last CHURN_WINDOW arrivals
        self.arrivals = 0.0
        self.departures = 0.0

    def add_host(self, h: Host) -> HostState:
        """Add a host to the pool (also how an elastic pool grows, see `grow`)."""
        if h.name in self.by_name:
            raise SchedError(f"duplicate host {h.name!r}")
        for r, v in h.capacity.items():
            if v < 0:
                raise SchedError(f"host {h.name!r}: {r} must not be negative")
            if r not in self.resources:
                raise SchedError(f"host {h.name!r}: unknown resource {r!r}")
        hs = HostState(len(self.hosts), h, self.resources, self.ratios)
        for i, c in enumerate(hs.cap):
            self.pool_cap[i] += c
            self.pool_max[i] = max(self.pool_max[i], c)
        self.hosts.append(hs)
        self.by_name[h.name] = hs
        self._index(hs)
        return hs

    # ---- index ----
    def _index(self, h: HostState) -> None:
        free0 = h.cap[0] - h.used[0]
        key = (int(free0 + EPS) if free0 > 0 else 0, _log2(h.cap[1] - h.used[1]) if len(h.cap) > 1 else 0)
        if key == h.key:
            return
        if h.key is not None:
            b = self._buckets[h.key]
            del b[h.index]
            if not b:
                del self._buckets[h.key]
                del self._keys[bisect.bisect_left(self._keys, h.key)]
        nb = self._buckets.get(key)
        if nb is None:
            nb = self._buckets[key] = {}
            bisect.insort(self._keys, key)
        nb[h.index] = None
        h.key = key

    # ---- helpers ----
    def vector(self, req: Request) -> list[float]:
        d = [0.0] * len(self.resources)
        for r, v in req.demand.items():
            try:
                i = self.resources.index(r)
            except ValueError:
                raise SchedError(f"request {req.id!r}: unknown resource {r!r}") from None
            if v < 0:
                raise SchedError(f"request {req.id!r}: {r} must not be negative (got {v:g})")
            d[i] = float(v)
        for g in req.groups:
            if g not in self.groups:
                raise SchedError(f"request {req.id!r}: unknown group {g!r}")
        return d

    def group_size(self, g: str) -> int:
        return sum(self.group_hosts[g].values())

    def host_of(self, req_id: str) -> str | None:
        h = self.where.get(req_id)
        return h.name if h else None

    def _check_quotas(self, quotas: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for project, limits in quotas.items():
            for r, limit in limits.items():
                if r != INSTANCES and r not in self.resources:
                    raise SchedError(f"quota of project {project!r}: unknown resource {r!r} "
                                     f"(quotas take {INSTANCES}, {', '.join(self.resources)})")
                if not limit >= 0:
                    raise SchedError(f"quota of project {project!r}: {r} must not be negative (got {limit:g})")
        return quotas

    def quota_reason(self, req: Request, d: list[float]) -> str | None:
        """Why placing req would exceed its project's quota, or None. A project without quota has no limit."""
        if req.project is None or req.project not in self.quotas:
            return None
        use = self.project_use.get(req.project) or [0.0] * len(self.resources)
        for r, limit in self.quotas[req.project].items():
            if r == INSTANCES:
                n = self.project_count.get(req.project, 0)
                if n + 1 > limit + EPS:
                    return f"quota: project {req.project!r} runs {n} instance(s), limit {limit:g}"
                continue
            i = self.resources.index(r)
            if use[i] + d[i] > limit + EPS:
                return f"quota: project {req.project!r} {r} {use[i]:g} + {d[i]:g} > limit {limit:g}"
        return None

    def churn(self) -> float:
        """Departures per arrival lately (0: instances stay, about 1: a steady state of comings and goings)."""
        return min(1.0, self.departures / self.arrivals) if self.arrivals else 0.0

    def count_arrival(self) -> None:
        """One more instance placed (the churn estimate counts arrivals here, departures in release)."""
        self.arrivals += 1
        if self.arrivals > 2 * CHURN_WINDOW:
            self.arrivals /= 2
            self.departures /= 2

    def passes(self, h: HostState, req: Request, d: list[float]) -> bool:
        if not h.fits(d):
            return False
        if h.types is not None or req.labels or req.groups:
            for _, f in filters.FILTERS[:3]:
                if f(self, h, req, d) is not None:
                    return False
        return True

    def why_not(self, h: HostState, req: Request, d: list[float]) -> tuple[str, str] | None:
        for name, f in filters.FILTERS:
            why = f(self, h, req, d)
            if why is not None:
                return name, why
        return None

    # ---- candidates and scoring ----
    def candidates(self, req: Request, d: list[float], exclude: frozenset[int] | set[int] = frozenset(),
                   nonempty_only: bool = False) -> list[HostState]:
        """Feasible hosts in the policy's preferred order, at most max_candidates of them."""
        order, limit, hosts, out = self.policy.order, self.max_candidates, self.hosts, []
        if order == "first":
            limit = 1
        pinned = self._affinity_hosts(req)
        if pinned is not None or order in ("first", "random"):
            seq: Iterable[int] = pinned if pinned is not None else range(len(hosts))
            for i in seq:
                h = hosts[i]
                if i not in exclude and not (nonempty_only and h.empty) and self.passes(h, req, d):
                    out.append(h)
                    if len(out) >= limit and order != "random":
                        break
            if order == "random" and out:
                return [self.rng.choice(out)]
            return out
        start = bisect.bisect_left(self._keys, (int(d[0] + EPS) if d[0] > 0 else 0, -1))
        need_m = _log2(d[1]) if len(d) > 1 else 0
        keys = self._keys[start:] if order == "asc" else reversed(self._keys[start:])
        for k in keys:
            if k[1] < need_m:
                continue
            for i in self._buckets[k]:
                h = hosts[i]
                if i in exclude or (nonempty_only and h.empty) or not self.passes(h, req, d):
                    continue
                out.append(h)
                if len(out) >= limit:
                    return out
        return out

    def _affinity_hosts(self, req: Request) -> list[int] | None:
        for g in req.groups:
            grp = self.groups[g]
            if grp.hard and grp.policy == "affinity" and grp.scope == "host" and self.group_hosts[g]:
                return sorted(self.group_hosts[g])
        return None

    def group_bonus(self, h: HostState, req: Request) -> float:
        bonus = 0.0
        for g in req.groups:
            grp = self.groups[g]
            if grp.hard:
                continue
            here = self.group_hosts[g].get(h.index, 0) if grp.scope == "host" else self.group_zones[g].get(h.zone, 0)
            bonus += SOFT_GROUP_WEIGHT * (here if grp.policy == "affinity" else -here)
        return bonus

    def best(self, cands: list[HostState], req: Request, d: list[float]) -> HostState:
        if len(cands) == 1:
            return cands[0]
        self.prepare_policy()
        scores = self.policy.rank(cands, d, req)
        if any(not self.groups[g].hard for g in req.groups):
            scores = [s + self.group_bonus(h, req) for s, h in zip(scores, cands, strict=True)]
        best_i = max(range(len(cands)), key=scores.__getitem__)
        return cands[best_i]

    def prepare_policy(self) -> None:
        """Tell the policy what its scores may depend on beyond the host: pool size, churn, pool use."""
        p = self.policy
        p.pool_size = len(self.hosts)
        p.churn = self.churn()
        p.pool_use = tuple(u / c if c > 0 else 0.0  # type: ignore[assignment]
                           for u, c in zip(self.pool_used[:2], self.pool_cap[:2], strict=True))
        p.pool_max = (self.pool_max[0], self.pool_max[1]) if self.hosts else None

    # ---- decisions ----
    def schedule(self, req: Request, bind: bool = True) -> Decision:
        """Place one request (online). Does not bind when bind=False (a dry run, as explain uses)."""
        if req.id in self.where:
            raise SchedError(f"request {req.id!r} is already placed")
        d = self.vector(req)
        why = self.quota_reason(req, d)
        if why:
            return Decision(req.id, None, why)
        cands = self.candidates(req, d)
        if not cands and self.grow is not None:
            fresh = self.add_host(self.grow(len(self.hosts)))
            if self.passes(fresh, req, d):
                cands = [fresh]
        if cands:
            h = self.best(cands, req, d)
            if bind:
                self.bind(req, h, d)
                self.count_arrival()
            return Decision(req.id, h.name)
        if self.preemption:
            plan = self.preemption_plan(req, d)
            if plan is not None:
                h, victims = plan
                why = (f"preempts {len(victims)} request(s) of lower priority than {req.priority} "
                       f"(lowest priority first, then fewest, then smallest)")
                if bind:
                    for v in victims:
                        self.release(v)
                    self.bind(req, h, d)
                    self.count_arrival()
                return Decision(req.id, h.name, why, victims)
        return Decision(req.id, None, "no host passes the filters")

    def bind(self, req: Request, h: HostState, d: list[float] | None = None) -> None:
        d = self.vector(req) if d is None else d
        for i, x in enumerate(d):
            h.used[i] += x
            self.pool_used[i] += x
        h.residents[req.id] = req
        self.where[req.id] = h
        for g in req.groups:
            gh = self.group_hosts[g]
            gh[h.index] = gh.get(h.index, 0) + 1
            gz = self.group_zones[g]
            gz[h.zone] = gz.get(h.zone, 0) + 1
        if req.project is not None:
            use = self.project_use.setdefault(req.project, [0.0] * len(self.resources))
            for i, x in enumerate(d):
                use[i] += x
            self.project_count[req.project] = self.project_count.get(req.project, 0) + 1
        self._index(h)

    def release(self, req_id: str, *, moving: bool = False) -> str:
        """Remove a placed request; returns the host it was on. moving: it is re-bound elsewhere (no departure)."""
        h = self.where.pop(req_id, None)
        if h is None:
            raise SchedError(f"request {req_id!r} is not placed")
        req = h.residents.pop(req_id)
        d = self.vector(req)
        for i, x in enumerate(d):
            before = h.used[i]
            h.used[i] = max(0.0, h.used[i] - x) if h.residents else 0.0
            self.pool_used[i] -= before - h.used[i]
        for g in req.groups:
            for table, key in ((self.group_hosts[g], h.index), (self.group_zones[g], h.zone)):
                table[key] -= 1  # type: ignore[index]
                if not table[key]:  # type: ignore[index]
                    del table[key]  # type: ignore[arg-type]
        if req.project is not None:
            use = self.project_use[req.project]
            for i, x in enumerate(d):
                use[i] -= x
            self.project_count[req.project] -= 1
        if not moving:
            self.departures += 1
        self._index(h)
        return h.name

    def preemption_plan(self, req: Request, d: list[float]) -> tuple[HostState, list[str]] | None:
        """Host and victims (lower priority only; lowest priorities, then fewest, then smallest)."""
        best: tuple[tuple[float, int, float], HostState, list[str]] | None = None
        for h in self.hosts:
            lower = sorted((r for r in h.residents.values() if r.priority < req.priority),
                           key=lambda r: (r.priority, -self._size(r, h)))
            if not lower or not self._fits_others(h, req, d):
                continue
            free = [c - u for c, u in zip(h.cap, h.used, strict=True)]
            chosen: list[Request] = []
            for r in lower:
                if all(x <= f + EPS for x, f in zip(d, free, strict=True)):
                    break
                chosen.append(r)
                for i, x in enumerate(self.vector(r)):
                    free[i] += x
            if not all(x <= f + EPS for x, f in zip(d, free, strict=True)):
                continue
            for r in sorted(chosen, key=lambda r: (-r.priority, self._size(r, h))):  # drop victims not needed
                rv = self.vector(r)
                if all(x <= f - y + EPS for x, f, y in zip(d, free, rv, strict=True)):
                    chosen.remove(r)
                    free = [f - y for f, y in zip(free, rv, strict=True)]
            key = (max(r.priority for r in chosen), len(chosen), sum(self._size(r, h) for r in chosen))
            if best is None or key < best[0]:
                best = (key, h, [r.id for r in chosen])
        return None if best is None else (best[1], best[2])

    def _size(self, r: Request, h: HostState) -> float:
        d = self.vector(r)
        return sum(d[k] / h.cap[k] for k in range(len(d)) if h.cap[k] > 0)

    def _fits_others(self, h: HostState, req: Request, d: list[float]) -> bool:
        return all(f(self, h, req, d) is None for _, f in filters.FILTERS[:3])

    # ---- batch ----
    def batch_order(self, reqs: list[Request]) -> list[Request]:
        """Priority first, then the biggest by dominant share (as FFD), then the submitted order."""
        ref = [max((h.cap[i] for h in self.hosts), default=0.0) or 1.0 for i in range(len(self.resources))]

        def key(r: Request) -> tuple[int, float, float]:
            shares = [x / ref[i] for i, x in enumerate(self.vector(r))]
            return (-r.priority, -max(shares, default=0.0), -sum(shares))

        return sorted(reqs, key=key)

    def place_batch(self, reqs: Iterable[Request]) -> list[Decision]:
        """Place many requests at once (sorted, then repaired by emptying hosts the batch opened)."""
        reqs = list(reqs)
        ids = [r.id for r in reqs]
        if len(set(ids)) != len(ids):
            raise SchedError("duplicate request id in batch")
        opened_before = {h.index for h in self.hosts if not h.empty}
        if self.policy.batch == "bins":
            from virtkit.sched.batch import fill_hosts

            out = fill_hosts(self, reqs)
        else:
            out = {r.id: self.schedule(r) for r in self.batch_order(reqs)}
        if self.policy.batch == "bins":
            from virtkit.sched.planner import repack

            batch_ids = {r.id for r in reqs if out[r.id].host is not None and not out[r.id].victims}
            moved = repack(self, candidates=[h for h in self.hosts if h.index not in opened_before and not h.empty],
                           movable=batch_ids)
            for rid, host in moved.items():
                out[rid].host = host
        return [out[i] for i in ids]
