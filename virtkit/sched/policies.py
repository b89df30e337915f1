"""Scoring policies: each ranks the hosts that passed the filters for one request (higher score wins).

`order` tells the engine where in its free-capacity index the policy's best hosts live, so that a decision
reads a few buckets instead of every host: "asc" (tightest fit first), "desc" (emptiest first),
"first" (host order, first feasible wins), "random".
Scores use the first two resources (vcpus, memory) as Kubernetes' fit plugins do by default.
"""

from __future__ import annotations

import math

from virtkit.sched.model import HostState, Request

DIMS = (0, 1)


def _after(h: HostState, d: list[float]) -> list[float]:
    """Utilisation of each scored resource once d is bound (0..1)."""
    return [(h.used[k] + d[k]) / h.cap[k] if h.cap[k] > 0 else 1.0 for k in DIMS]


class Policy:
    name = "base"
    order = "asc"
    needs_rank = False  # True: scores depend on the whole candidate set (normalised weighers)
    batch = "sorted"  # or "bins": fill host by host (see batch.py)
    pool_size = 1  # set by the engine before ranking
    churn = 0.0  # departures / arrivals lately, set by the engine before ranking
    pool_use: tuple[float, float] = (0.0, 0.0)  # the pool's used share of vcpus and memory, set likewise
    pool_max: tuple[float, float] | None = None  # the largest host's vcpus and memory, set likewise

    def describe(self) -> str:
        """What the policy's scores depend on beyond the host and the request (explain prints it)."""
        return ""

    def score(self, h: HostState, d: list[float], req: Request) -> float:
        return sum(self.breakdown(h, d, req).values())

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        raise NotImplementedError

    def rank(self, cands: list[HostState], d: list[float], req: Request) -> list[float]:
        return [self.score(h, d, req) for h in cands]

    def rank_breakdown(self, cands: list[HostState], d: list[float], req: Request) -> list[dict[str, float]]:
        return [self.breakdown(h, d, req) for h in cands]


class Spread(Policy):
    """Kubernetes LeastAllocated + BalancedAllocation, equal weights (0..100 each)."""

    name, order = "spread", "desc"

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        u = _after(h, d)
        mean = sum(u) / len(u)
        std = (sum((x - mean) ** 2 for x in u) / len(u)) ** 0.5
        return {"least_allocated": (1 - mean) * 100, "balanced_allocation": (1 - std) * 100}

    def score(self, h: HostState, d: list[float], req: Request) -> float:
        u0, u1 = _after(h, d)
        return (1 - (u0 + u1) / 2) * 100 + (1 - abs(u0 - u1) / 2) * 100


class Pack(Policy):
    """Kubernetes MostAllocated."""

    name, order = "pack", "asc"

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        u = _after(h, d)
        return {"most_allocated": sum(u) / len(u) * 100}


class Nova(Policy):
    """Nova's default RAMWeigher + CPUWeigher (multiplier 1.0 each: spread), min-max normalised over candidates."""

    name, order, needs_rank = "nova", "desc", True

    def rank_breakdown(self, cands: list[HostState], d: list[float], req: Request) -> list[dict[str, float]]:
        ram = [h.cap[1] - h.used[1] for h in cands]
        cpu = [h.cap[0] - h.used[0] for h in cands]

        def norm(vals: list[float]) -> list[float]:
            lo, hi = min(vals), max(vals)
            return [0.0 if hi == lo else (v - lo) / (hi - lo) for v in vals]

        return [{"ram_weigher": r, "cpu_weigher": c} for r, c in zip(norm(ram), norm(cpu), strict=True)]

    def rank(self, cands: list[HostState], d: list[float], req: Request) -> list[float]:
        return [b["ram_weigher"] + b["cpu_weigher"] for b in self.rank_breakdown(cands, d, req)]

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        return self.rank_breakdown([h], d, req)[0]


class BestFit(Policy):
    """Best fit: the host left with the least normalised free capacity."""

    name, order = "bestfit", "asc"

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        return {"remaining": -sum(1 - x for x in _after(h, d)) * 100}


class FirstFit(Policy):
    """First fit in host order (with --batch the sort makes it first-fit decreasing)."""

    name, order = "ffd", "first"

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        return {"host_order": -float(h.index)}


class Tetris(Policy):
    """Tetris: dot product of the normalised demand and the host's normalised free capacity."""

    name, order = "tetris", "desc"

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        dot = sum(d[k] / h.cap[k] * (h.cap[k] - h.used[k]) / h.cap[k] for k in DIMS if h.cap[k] > 0)
        return {"alignment": dot * 100}


class Random(Policy):
    """Uniform among the feasible hosts (seeded by the engine)."""

    name, order = "random", "random"

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        return {"random": 0.0}


class Virtkit(Policy):
    """virtkit's fragmentation-aware policy: consolidate while instances come and go, align shapes while they stay.

    Two scorings, blended by the churn the engine observes (departures / arrivals over the recent past):
    - consolidate (weight min(1, churn / CHURN_FULL)) — what departures reward:
      fill: the host left with the least free capacity, so that hosts drain and empty whole for big
      requests; free capacity in absolute terms (as a share of the pool's largest host, not of the host
      itself: with mixed host shapes a small hole on a small host is kept before a big one on a big host),
      each resource weighted by how scarce it is in the pool (its used share to the power SCARCITY_POWER,
      so the resource that runs out first decides, as in a CPU-bound pool of memory-rich hosts);
      stranding: penalise free vCPU left without the memory the workload asks per vCPU (or the reverse),
      measured against the running vCPU:memory ratio of the requests seen so far, not the host's own shape;
      lifetime: when departures are given, only their lifetime class is used (as LAVA would predict it: the
      lifetime rounded up to 5 min x 4^k), and extending a host's life past its residents' last class end is
      penalised on a log scale (an hour's extension costs a tenth of a month's, a day's half), so hosts
      empty together;
      age: a slight preference for hosts early in the pool.
    - align (the rest) — what a pool whose instances stay needs, since every host's free space is filled
      by what comes next: the cosine between the request and the host's free capacity (both as fractions
      of the host), so each host fills evenly in both resources and little is stranded when the pool is
      full; a small fill term breaks ties towards the fuller host.
    Weights were chosen on traces other than the benchmark's report seeds (bench/scheduler.py), see
    bench/results/scheduler.md.
    """

    name, order, batch = "virtkit", "asc", "bins"
    strand_weight = 100.0
    lifetime_weight = 10.0
    age_weight = 2.0
    align_weight = 100.0
    align_fill = 0.1  # share of the fill term kept while aligning (a tie-break)
    CHURN_FULL = 0.5  # churn from which the policy consolidates only
    SCARCITY_POWER = 8.0
    LIFE_UNIT = 300.0  # lifetime classes: up to 5 min, 20 min, 80 min, ... (x4 each)
    LIFE_HORIZON = 30 * 86400.0  # an extension this long costs the lifetime weight (longer ones more)

    def __init__(self, churn: float | None = None) -> None:
        """churn: a fixed blend (1.0: consolidate only, 0.0: align only) instead of the engine's estimate."""
        self.seen_cpu = 0.0
        self.seen_mem = 0.0
        self.fixed_churn = churn

    def _ratio(self) -> float:
        return self.seen_mem / self.seen_cpu if self.seen_cpu > 0 and self.seen_mem > 0 else 0.0

    def consolidate_weight(self) -> float:
        churn = self.churn if self.fixed_churn is None else self.fixed_churn
        return min(1.0, max(0.0, churn) / self.CHURN_FULL)

    def describe(self) -> str:
        g = self.consolidate_weight()
        churn = self.churn if self.fixed_churn is None else self.fixed_churn
        p0, p1 = (max(u, 1e-6) ** self.SCARCITY_POWER for u in self.pool_use)
        return (f"churn {churn:.2f} (departures / arrivals, recent): consolidate x{g:.2f}, align x{1 - g:.2f}; "
                f"workload ratio {self._ratio() / 1024:.2f} GiB per vCPU; pool use vcpus {self.pool_use[0]:.0%}, "
                f"memory {self.pool_use[1]:.0%}: free vcpus weigh x{2 * p0 / (p0 + p1):.2f} in the fill, "
                f"free memory x{2 * p1 / (p0 + p1):.2f}")

    @staticmethod
    def _stranded(h: HostState, f0: float, f1: float, rho: float) -> float:
        usable = f0 if f0 < f1 / rho else f1 / rho
        return (f0 - usable) / h.cap[0] + (f1 - usable * rho) / h.cap[1]

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        c0, c1 = h.cap[0], h.cap[1]
        if c0 <= 0 or c1 <= 0:
            return {"fill": 0.0}
        g = self.consolidate_weight()
        f0, f1 = c0 - h.used[0], c1 - h.used[1]
        a0, a1 = f0 - d[0], f1 - d[1]
        k0, k1 = self._fill_scale(h)
        fill = g * (2 - k0 * a0 - k1 * a1) * 50 + (1 - g) * self.align_fill * ((c0 - a0) / c0 + (c1 - a1) / c1) * 50
        out = {"fill": fill}
        if g > 0:
            rho = self._ratio()
            if rho > 0:
                out["stranding"] = -g * self.strand_weight * (self._stranded(h, a0, a1, rho)
                                                              - self._stranded(h, f0, f1, rho))
            out["age"] = -g * self.age_weight * h.index / max(1, self.pool_size)
            mine = self.class_end(req) if self.lifetime_weight and h.residents else None
            if mine is not None:
                end = max((e for r in h.residents.values() if (e := self.class_end(r)) is not None), default=None)
                if end is not None and mine > end:
                    out["lifetime"] = -g * self.lifetime_weight * (math.log1p((mine - end) / 3600)
                                                                   / math.log1p(self.LIFE_HORIZON / 3600))
        if g < 1:
            out["alignment"] = (1 - g) * self.align_weight * _cosine(f0 / c0, f1 / c1, d[0] / c0, d[1] / c1)
        return out

    def _fill_scale(self, h: HostState) -> tuple[float, float]:
        """What one unit of free vcpus and of memory costs the consolidating fill score (2 = all free)."""
        p0, p1 = (max(u, 1e-6) ** self.SCARCITY_POWER for u in self.pool_use)
        m0, m1 = self.pool_max or (h.cap[0], h.cap[1])
        return 2 * p0 / (p0 + p1) / (m0 or 1.0), 2 * p1 / (p0 + p1) / (m1 or 1.0)

    @classmethod
    def class_end(cls, r: Request) -> float | None:
        """When r's lifetime class says it ends: its arrival plus its lifetime rounded up to a class bound."""
        if r.departure is None:
            return None
        if r.arrival is None:
            return r.departure
        life = r.departure - r.arrival
        k = math.ceil(math.log(life / cls.LIFE_UNIT, 4) - 1e-9) if life > cls.LIFE_UNIT else 0
        return r.arrival + cls.LIFE_UNIT * 4.0 ** k

    def rank(self, cands: list[HostState], d: list[float], req: Request) -> list[float]:
        self.seen_cpu += d[0]
        self.seen_mem += d[1]
        if self.lifetime_weight and req.departure is not None and self.consolidate_weight() > 0:
            return [sum(self.breakdown(h, d, req).values()) for h in cands]
        # the hot path of the default policy: breakdown() inlined, no dicts
        g = self.consolidate_weight()
        rho = self._ratio() if g > 0 else 0.0
        d0, d1 = d[0], d[1]
        wf, wg = 50 * (1 - g) * self.align_fill, 50 * g
        k0 = k1 = 0.0
        if wg and self.pool_max is not None:
            k0, k1 = self._fill_scale(cands[0])
        ws, wa = g * self.strand_weight, (1 - g) * self.align_weight
        age = g * self.age_weight / max(1, self.pool_size)
        dn = math.hypot(d0, d1)
        out = []
        for h in cands:
            c0, c1 = h.cap[0], h.cap[1]
            if c0 <= 0 or c1 <= 0:
                out.append(sum(self.breakdown(h, d, req).values()))
                continue
            f0, f1 = c0 - h.used[0], c1 - h.used[1]
            a0, a1 = f0 - d0, f1 - d1
            s = ((c0 - a0) / c0 + (c1 - a1) / c1) * wf
            if wg:
                if self.pool_max is None:
                    k0, k1 = self._fill_scale(h)
                s += (2 - k0 * a0 - k1 * a1) * wg
            if age:
                s -= age * h.index
            if rho > 0:
                usable = a0 if a0 < a1 / rho else a1 / rho
                strand = (a0 - usable) / c0 + (a1 - usable * rho) / c1
                usable = f0 if f0 < f1 / rho else f1 / rho
                strand -= (f0 - usable) / c0 + (f1 - usable * rho) / c1
                s -= strand * ws
            if wa and dn:
                s += wa * _cosine(f0 / c0, f1 / c1, d0 / c0, d1 / c1)
            out.append(s)
        return out

    def score(self, h: HostState, d: list[float], req: Request) -> float:
        return sum(self.breakdown(h, d, req).values())


def _cosine(x0: float, x1: float, y0: float, y1: float) -> float:
    """cos of the angle between (x0, x1) and (y0, y1); 0 when either is zero."""
    n = math.hypot(x0, x1) * math.hypot(y0, y1)
    return (x0 * y0 + x1 * y1) / n if n > 0 else 0.0


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Virtkit, Spread, Pack, Nova, BestFit, FirstFit, Tetris, Random)
}


def make_policy(name: str) -> Policy:
    from virtkit.sched.model import SchedError

    try:
        return POLICIES[name]()
    except KeyError:
        raise SchedError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})") from None
