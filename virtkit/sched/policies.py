"""Scoring policies: each ranks the hosts that passed the filters for one request (higher score wins).

`order` tells the engine where in its free-capacity index the policy's best hosts live, so that a decision
reads a few buckets instead of every host: "asc" (tightest fit first), "desc" (emptiest first),
"first" (host order, first feasible wins), "random".
Scores use the first two resources (vcpus, memory) as Kubernetes' fit plugins do by default.
"""

from __future__ import annotations

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
    """virtkit's fragmentation-aware best fit.

    - fill: prefer the host that ends up fullest (few open hosts, big holes kept whole elsewhere);
    - stranding: penalise what the placement leaves unusable: free vCPU without the memory the workload
      asks per vCPU (or the reverse), measured against the running vCPU:memory ratio of the requests seen
      so far, not the host's own shape — so mixed host shapes are judged by what will come;
    - lifetime: when departures are known, penalise extending a host's life past its residents' last
      departure, so hosts empty together (LAVA-like);
    - age: a slight preference for hosts early in the pool (first fit's strength: the tail of the pool
      stays empty, whole, for big requests or to be powered down).
    Weights were tuned on the benchmark's traces (bench/scheduler.py), see bench/results/scheduler.md.
    """

    name, order, batch = "virtkit", "asc", "bins"
    strand_weight = 100.0
    delta = True
    lifetime_weight = 10.0
    age_weight = 2.0
    day = 86400.0

    def __init__(self) -> None:
        self.seen_cpu = 0.0
        self.seen_mem = 0.0

    def _ratio(self) -> float:
        return self.seen_mem / self.seen_cpu if self.seen_cpu > 0 and self.seen_mem > 0 else 0.0

    def _stranded(self, h: HostState, d: list[float], rho: float) -> float:
        c0, c1 = h.cap[0], h.cap[1]
        if rho <= 0 or c0 <= 0 or c1 <= 0:
            return 0.0
        fc, fm = c0 - h.used[0] - d[0], c1 - h.used[1] - d[1]
        usable = min(fc, fm / rho)
        return (fc - usable) / c0 + (fm - usable * rho) / c1

    def breakdown(self, h: HostState, d: list[float], req: Request) -> dict[str, float]:
        u0, u1 = _after(h, d)
        rho = self._ratio()
        strand = self._stranded(h, d, rho)
        if self.delta:
            strand -= self._stranded(h, [0.0] * len(d), rho)
        out = {"fill": (u0 + u1) * 50, "stranding": -strand * self.strand_weight,
               "age": -self.age_weight * h.index / max(1, self.pool_size)}
        if self.lifetime_weight and req.departure is not None and h.residents:
            end = max((r.departure for r in h.residents.values() if r.departure is not None), default=None)
            if end is not None and req.departure > end:
                out["lifetime"] = -min(1.0, (req.departure - end) / self.day) * self.lifetime_weight
        return out

    def rank(self, cands: list[HostState], d: list[float], req: Request) -> list[float]:
        self.seen_cpu += d[0]
        self.seen_mem += d[1]
        if self.lifetime_weight and req.departure is not None:
            return [sum(self.breakdown(h, d, req).values()) for h in cands]
        # the hot path of the default policy: breakdown() inlined, no dicts
        rho = self._ratio()
        d0, d1, w, delta = d[0], d[1], self.strand_weight, self.delta
        age = self.age_weight / max(1, self.pool_size)
        out = []
        for h in cands:
            c0, c1 = h.cap[0], h.cap[1]
            if c0 <= 0 or c1 <= 0:
                out.append(sum(self.breakdown(h, d, req).values()))
                continue
            f0, f1 = c0 - h.used[0], c1 - h.used[1]
            s = ((c0 - f0 + d0) / c0 + (c1 - f1 + d1) / c1) * 50 - age * h.index
            if rho > 0:
                a0, a1 = f0 - d0, f1 - d1
                usable = a0 if a0 < a1 / rho else a1 / rho
                strand = (a0 - usable) / c0 + (a1 - usable * rho) / c1
                if delta:
                    usable = f0 if f0 < f1 / rho else f1 / rho
                    strand -= (f0 - usable) / c0 + (f1 - usable * rho) / c1
                s -= strand * w
            out.append(s)
        return out

    def score(self, h: HostState, d: list[float], req: Request) -> float:
        return sum(self.breakdown(h, d, req).values())


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Virtkit, Spread, Pack, Nova, BestFit, FirstFit, Tetris, Random)
}


def make_policy(name: str) -> Policy:
    from virtkit.sched.model import SchedError

    try:
        return POLICIES[name]()
    except KeyError:
        raise SchedError(f"unknown policy {name!r} (choose from {', '.join(POLICIES)})") from None
