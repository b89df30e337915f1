"""The `virtkit` policy: its two scorings, the churn blend, explain's view of it, and the engine's churn estimate."""

from __future__ import annotations

import random
import re

import pytest

from virtkit.sched import Host, Request, Scheduler, plan_consolidation
from virtkit.sched.explain import explain, render
from virtkit.sched.policies import Virtkit

ONE = {"vcpus": 1.0, "memory_mib": 1.0}


def req(rid: str, cpu: float, mem: float, **kw: object) -> Request:
    return Request(rid, {"vcpus": cpu, "memory_mib": mem}, **kw)  # type: ignore[arg-type]


def two_hosts(policy: Virtkit | str = "virtkit") -> Scheduler:
    """h0: 14 of 16 vCPU used, little memory; h1 empty."""
    s = Scheduler([Host("h0", {"vcpus": 16, "memory_mib": 16}), Host("h1", {"vcpus": 16, "memory_mib": 16})],
                  policy, ratios=ONE)
    s.bind(req("busy", 14, 2), s.by_name["h0"])
    return s


def test_consolidating_prefers_the_fuller_host() -> None:
    assert two_hosts(Virtkit(churn=1.0)).schedule(req("r", 1, 1)).host == "h0"


def test_aligning_prefers_the_host_whose_free_shape_matches() -> None:
    # h0's free space is nearly all memory; a balanced request matches the empty host's shape
    assert two_hosts(Virtkit(churn=0.0)).schedule(req("r", 1, 1)).host == "h1"
    # and a memory-heavy one matches h0's
    assert two_hosts(Virtkit(churn=0.0)).schedule(req("m", 1, 8)).host == "h0"


def test_the_engine_estimates_churn_and_the_policy_follows() -> None:
    s = two_hosts()
    assert s.churn() == 0.0  # nothing placed through the engine yet: instances stay, align
    assert s.schedule(req("r", 1, 1)).host == "h1"
    for i in range(4):
        s.schedule(req(f"t{i}", 1, 1))
        s.release(f"t{i}")  # departures
    assert s.churn() == pytest.approx(4 / 5)
    s.release("r")
    assert s.schedule(req("r2", 1, 1)).host == "h0"  # churn high: consolidate


def test_moves_are_not_departures() -> None:
    s = Scheduler([Host(f"h{i}", {"vcpus": 8, "memory_mib": 8}) for i in range(4)], "spread", ratios=ONE)
    for i in range(4):
        s.schedule(req(f"r{i}", 2, 2))
    assert plan_consolidation(s)
    batch = [req(f"b{i}", c, m) for i, (c, m) in enumerate([(5, 1), (1, 5), (3, 3), (3, 3)])]
    s.policy = Virtkit()
    s.place_batch(batch)
    assert s.departures == 0 and s.arrivals == 8


@pytest.mark.parametrize("churn", [0.0, 0.2, 0.5, 1.0])
@pytest.mark.parametrize("lifetimes", [False, True])
def test_breakdown_adds_up_to_the_score(churn: float, lifetimes: bool) -> None:
    rng = random.Random(3)
    hosts = [Host(f"h{i}", {"vcpus": rng.choice([32, 64]), "memory_mib": rng.choice([128, 256])}) for i in range(6)]
    s = Scheduler(hosts, Virtkit(churn=churn), ratios=ONE)
    for i in range(30):
        dep = float(rng.randrange(1000, 200000)) if lifetimes else None
        s.schedule(req(f"r{i}", rng.choice([1, 2, 4]), rng.choice([2, 8, 16]), departure=dep))
    r = req("x", 2, 12, departure=250000.0 if lifetimes else None)  # outlives every host: lifetime counts
    d = s.vector(r)
    cands = s.candidates(r, d)
    policy = s.policy
    assert isinstance(policy, Virtkit)
    scores = policy.rank(cands, d, r)  # counts r in the workload ratio first, as the breakdown then sees it
    parts = policy.rank_breakdown(cands, d, r)
    for p, score in zip(parts, scores, strict=True):
        assert sum(p.values()) == pytest.approx(score, rel=1e-9)
    names = set().union(*parts)
    assert policy.consolidate_weight() == min(1.0, churn / Virtkit.CHURN_FULL)
    if churn < Virtkit.CHURN_FULL:
        assert "alignment" in names
    else:
        assert "alignment" not in names
    if churn > 0:
        assert {"stranding", "age"} <= names
        if lifetimes:
            assert "lifetime" in names


def test_explain_shows_the_blend_and_every_part() -> None:
    s = two_hosts()
    e = explain(s, req("r", 1, 1))
    assert e["policy_state"].startswith("churn 0.00")
    text = render(e)
    assert "policy state: churn 0.00 (departures / arrivals, recent): consolidate x0.00, align x1.00" in text
    assert "alignment=" in text and "* h1: score" in text
    s = two_hosts(Virtkit(churn=1.0))
    text = render(explain(s, req("r", 1, 1)))
    assert "consolidate x1.00, align x0.00" in text and "fill=" in text and "* h0: score" in text


def test_lifetime_class_keeps_long_lived_instances_together() -> None:
    s = Scheduler([Host("h0", {"vcpus": 16, "memory_mib": 16}), Host("h1", {"vcpus": 16, "memory_mib": 16})],
                  Virtkit(churn=1.0), ratios=ONE)
    s.bind(req("short", 4, 4, arrival=0.0, departure=600.0), s.by_name["h0"])
    s.bind(req("long", 4, 4, arrival=0.0, departure=10 * 86400.0), s.by_name["h1"])
    # a 5-day instance would keep h0 busy for days after its 10-minute resident leaves
    assert s.schedule(req("x", 1, 1, arrival=0.0, departure=5 * 86400.0), bind=False).host == "h1"
    # a short one extends neither host's life: the usual preference (fuller, then earlier host) decides
    assert s.schedule(req("y", 1, 1, arrival=0.0, departure=500.0), bind=False).host == "h0"


def test_only_the_lifetime_class_counts() -> None:
    s = Scheduler([Host("h0", {"vcpus": 16, "memory_mib": 16})], Virtkit(churn=1.0), ratios=ONE)
    s.bind(req("short", 4, 4, arrival=0.0, departure=600.0), s.by_name["h0"])

    def lifetime_term(departure: float) -> float:
        rows = explain(s, req("x", 1, 1, arrival=0.0, departure=departure))["hosts"]
        return float(rows[0]["breakdown"]["lifetime"])

    # 5 and 6 days round up to the same class (5 min x 4^6, about 14 days); 20 days is the next class
    assert lifetime_term(5 * 86400.0) == lifetime_term(6 * 86400.0) > lifetime_term(20 * 86400.0)
    assert Virtkit.class_end(req("z", 1, 1, arrival=100.0, departure=400.0)) == 400.0  # 5 min: the first class
    assert Virtkit.class_end(req("z", 1, 1, arrival=100.0, departure=401.0)) == 100.0 + 1200.0
    assert Virtkit.class_end(req("z", 1, 1, departure=401.0)) == 401.0  # no arrival: the departure as given


def test_consolidating_keeps_the_big_hole_on_mixed_host_shapes() -> None:
    # the big host is fuller as a share of itself, yet its 24-vCPU hole is the one a big request needs
    def pool(policy: Virtkit | str) -> Scheduler:
        s = Scheduler([Host("big", {"vcpus": 96, "memory_mib": 384}), Host("small", {"vcpus": 32, "memory_mib": 128})],
                      policy, ratios=ONE)
        s.bind(req("b", 72, 288), s.by_name["big"])
        s.bind(req("s", 16, 64), s.by_name["small"])
        return s

    s = pool(Virtkit(churn=1.0))
    assert s.schedule(req("x", 8, 32)).host == "small"
    assert s.schedule(req("large", 24, 96)).host == "big"
    s = pool("pack")  # MostAllocated, by share of each host, splits the free space in two holes of 16
    assert s.schedule(req("x", 8, 32)).host == "big"
    assert s.schedule(req("large", 24, 96)).host is None


@pytest.mark.parametrize(("scarce", "expect"), [("vcpus", "a"), ("memory_mib", "b")])
def test_consolidating_fills_by_the_resource_the_pool_runs_out_of(scarce: str, expect: str) -> None:
    # a and b end equally full by share; the one whose leftover is of the resource in excess is preferred
    s = Scheduler([Host(n, {"vcpus": 16, "memory_mib": 16}) for n in ("a", "b", "c")], Virtkit(churn=1.0),
                  ratios=ONE)
    s.bind(req("ra", 14, 6), s.by_name["a"])  # free: 2 vCPU, 10 memory
    s.bind(req("rb", 10, 12), s.by_name["b"])  # free: 6 vCPU, 4 memory
    s.bind(req("rc", 16 if scarce == "vcpus" else 0, 16 if scarce == "memory_mib" else 0), s.by_name["c"])
    assert s.schedule(req("x", 1, 1)).host == expect
    e = explain(s, req("y", 1, 1))
    m = re.search(r"free vcpus weigh x([\d.]+) in the fill, free memory x([\d.]+)", e["policy_state"])
    assert m, e["policy_state"]
    w_cpu, w_mem = float(m[1]), float(m[2])
    assert (w_cpu > 1.8 > 0.2 > w_mem) if scarce == "vcpus" else (w_mem > 1.8 > 0.2 > w_cpu)
