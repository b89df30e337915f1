"""Unit tests of the placement engine: filters, scorers, index, batch, preemption, quotas, planner, explain."""

from __future__ import annotations

import pytest

from virtkit.sched import Group, Host, Request, SchedError, Scheduler, plan_consolidation, plan_drain
from virtkit.sched.explain import explain, render
from virtkit.sched.policies import POLICIES

ONE = {"vcpus": 1.0, "memory_mib": 1.0}


def hosts(*caps: tuple[float, float], labels: list[dict[str, str]] | None = None) -> list[Host]:
    return [Host(f"h{i}", {"vcpus": c, "memory_mib": m}, (labels or [{}] * len(caps))[i])
            for i, (c, m) in enumerate(caps)]


def req(rid: str, cpu: float, mem: float, **kw: object) -> Request:
    return Request(rid, {"vcpus": cpu, "memory_mib": mem}, **kw)  # type: ignore[arg-type]


def sched(hs: list[Host], policy: str = "virtkit", **kw: object) -> Scheduler:
    kw.setdefault("ratios", ONE)
    return Scheduler(hs, policy, **kw)  # type: ignore[arg-type]


# ---- filters ----
def test_capacity_filter_names_the_short_resource() -> None:
    s = sched(hosts((4, 1000)))
    e = explain(s, req("r", 2, 2000))
    row = e["hosts"][0]
    assert row["filter"] == "capacity" and "memory_mib short by 1000" in row["reason"]
    assert e["decision"] is None


def test_overcommit_ratios_apply() -> None:
    s = Scheduler(hosts((4, 1000)), "pack")  # engine default: CPU 4.0, memory 1.0
    for i in range(16):
        assert s.schedule(req(f"r{i}", 1, 10)).host == "h0"
    assert s.schedule(req("x", 1, 10)).host is None


def test_label_and_type_filters() -> None:
    s = sched(hosts((8, 8), (8, 8), labels=[{"zone": "a", "types": "small"}, {"zone": "b"}]))
    assert s.schedule(req("a", 1, 1, labels={"zone": "a"}, instance_type="small")).host == "h0"
    assert s.schedule(req("b", 1, 1, labels={"zone": "a"}, instance_type="big")).host is None
    e = explain(s, req("c", 1, 1, labels={"zone": "c"}))
    assert {r["filter"] for r in e["hosts"]} == {"labels", "instance_type"}


def test_hard_anti_affinity_host_and_zone() -> None:
    hs = hosts((8, 8), (8, 8), (8, 8), labels=[{"zone": "a"}, {"zone": "a"}, {"zone": "b"}])
    s = sched(hs, groups=[Group("g", "anti-affinity", True, "zone")])
    placed = [s.schedule(req(f"r{i}", 1, 1, groups=("g",))).host for i in range(3)]
    assert placed[2] is None and {s.by_name[h].zone for h in placed[:2] if h} == {"a", "b"}  # type: ignore[index]
    s = sched(hs, groups=[Group("g", "anti-affinity", True, "host")])
    placed = [s.schedule(req(f"r{i}", 1, 1, groups=("g",))).host for i in range(4)]
    assert len(set(placed[:3])) == 3 and placed[3] is None


def test_hard_affinity_and_soft_groups() -> None:
    groups = [Group("a", "affinity", True), Group("s", "anti-affinity", False)]
    s = sched(hosts((8, 8), (8, 8)), "spread", groups=groups)
    first = s.schedule(req("a1", 1, 1, groups=("a",))).host
    assert s.schedule(req("a2", 1, 1, groups=("a",))).host == first
    h1 = s.schedule(req("s1", 1, 1, groups=("s",))).host
    h2 = s.schedule(req("s2", 1, 1, groups=("s",))).host
    assert h1 != h2
    assert s.schedule(req("s3", 1, 1, groups=("s",))).host is not None  # soft: still placed


def test_unknown_group_and_negative_demand() -> None:
    s = sched(hosts((8, 8)))
    with pytest.raises(SchedError, match="unknown group"):
        s.schedule(req("r", 1, 1, groups=("nope",)))
    with pytest.raises(SchedError, match="negative"):
        s.schedule(req("r", -1, 1))


# ---- scorers ----
@pytest.mark.parametrize(("policy", "expect"), [
    ("spread", "h1"), ("pack", "h0"), ("nova", "h1"), ("bestfit", "h0"), ("ffd", "h0"), ("tetris", "h1"),
    ("virtkit", "h0"),
])
def test_each_policy_prefers_its_host(policy: str, expect: str) -> None:
    s = sched(hosts((16, 16), (16, 16)), policy)
    s.bind(req("busy", 8, 8), s.by_name["h0"])
    assert s.schedule(req("r", 2, 2)).host == expect


def test_virtkit_keeps_remaining_shape() -> None:
    # h0 is cpu-heavy-used; a memory-heavy request fits better there than on h1 (mem-heavy-used)
    s = sched(hosts((16, 16), (16, 16)))
    s.bind(req("c", 10, 2), s.by_name["h0"])
    s.bind(req("m", 2, 10), s.by_name["h1"])
    assert s.schedule(req("r", 1, 6)).host == "h0"
    assert s.schedule(req("q", 6, 1)).host == "h1"


def test_random_is_seeded() -> None:
    picks = []
    for _ in range(2):
        s = sched(hosts(*[(8, 8)] * 10), "random", seed=7)
        picks.append([s.schedule(req(f"r{i}", 1, 1)).host for i in range(10)])
    assert picks[0] == picks[1] and len(set(picks[0])) > 1


def test_every_policy_has_a_breakdown() -> None:
    for name in POLICIES:
        s = sched(hosts((8, 8), (4, 4)), name)
        e = explain(s, req("r", 1, 1))
        assert all(r["status"] in ("scored", "feasible") and r["breakdown"] for r in e["hosts"])
        assert "decision: h" in render(e)


# ---- index ----
def test_index_matches_exhaustive_scan_for_best_fit() -> None:
    import random

    rng = random.Random(1)
    hs = hosts(*[(64, 256)] * 300)
    a, b = sched(hs, "bestfit"), sched(hs, "bestfit", max_candidates=None)
    for i in range(1500):
        r = req(f"r{i}", rng.choice([1, 2, 4, 8]), rng.choice([2, 4, 8, 16, 32]))
        da, db = a.schedule(r), b.schedule(r)
        assert (da.host is None) == (db.host is None)
    used = sum(not h.empty for h in a.hosts)
    assert used <= sum(not h.empty for h in b.hosts) * 1.05


def test_feasible_request_is_found_among_many_full_hosts() -> None:
    s = sched(hosts(*[(4, 4)] * 500 + [(64, 64)]))
    for h in s.hosts[:-1]:
        s.bind(req(f"f{h.index}", 4, 4), h)
    assert s.schedule(req("big", 32, 32)).host == "h500"


# ---- batch, preemption, quotas ----
def test_batch_packs_better_than_online() -> None:
    reqs = [req(f"s{i}", 1, 1) for i in range(8)] + [req(f"b{i}", 6, 6) for i in range(2)]
    online = sched(hosts(*[(8, 8)] * 4), "ffd")
    assert sum(online.schedule(r).host is None for r in reqs) >= 0
    on_used = sum(not h.empty for h in online.hosts)
    batch = sched(hosts(*[(8, 8)] * 4), "ffd")
    assert all(d.host for d in batch.place_batch(reqs))
    assert sum(not h.empty for h in batch.hosts) <= on_used


def test_virtkit_batch_repack_empties_hosts() -> None:
    reqs = [req(f"r{i}", c, m) for i, (c, m) in enumerate([(5, 1), (1, 5), (3, 3), (3, 3), (1, 5), (5, 1)])]
    s = sched(hosts(*[(8, 8)] * 6))
    ds = s.place_batch(reqs)
    assert [d.request_id for d in ds] == [r.id for r in reqs] and all(d.host for d in ds)
    assert sum(not h.empty for h in s.hosts) == 3


def test_preemption_picks_fewest_lowest_priority_victims() -> None:
    s = sched(hosts((8, 8), (8, 8)))
    s.bind(req("low1", 4, 4, priority=0), s.by_name["h0"])
    s.bind(req("low2", 4, 4, priority=0), s.by_name["h0"])
    s.bind(req("mid", 6, 6, priority=5), s.by_name["h1"])
    d = s.schedule(req("hi", 4, 4, priority=10))
    assert d.host == "h0" and len(d.victims) == 1 and d.victims[0].startswith("low")
    assert s.schedule(req("lowest", 8, 8, priority=0)).host is None  # nothing below priority 0


def test_quota_holds() -> None:
    s = sched(hosts((64, 64)), quotas={"p": {"vcpus": 4}})
    assert s.schedule(req("a", 3, 1, project="p")).host
    d = s.schedule(req("b", 2, 1, project="p"))
    assert d.host is None and "quota" in d.reason
    s.release("a")
    assert s.schedule(req("b", 2, 1, project="p")).host


# ---- planner ----
def test_consolidation_empties_hosts_and_is_feasible_in_order() -> None:
    s = sched(hosts(*[(8, 8)] * 4), "spread")
    for i in range(4):
        s.schedule(req(f"r{i}", 2, 2))
    before = {h.name: list(h.residents) for h in s.hosts}
    plan = plan_consolidation(s)
    assert {h.name: list(h.residents) for h in s.hosts} == before  # planning leaves the state alone
    assert len({m.request_id for m in plan}) == len(plan)  # each request moves once
    targets, sources = {m.target for m in plan}, {m.source for m in plan}
    assert not targets & sources  # no ping-pong
    for m in plan:
        r = s.by_name[m.source].residents[m.request_id]
        s.release(m.request_id)
        assert s.by_name[m.target].fits(s.vector(r))
        s.bind(r, s.by_name[m.target])
    assert sum(not h.empty for h in s.hosts) == 1


def test_drain() -> None:
    s = sched(hosts((8, 8), (8, 8), (8, 8)), "spread")
    for i in range(3):
        s.schedule(req(f"r{i}", 4, 4))
    plan = plan_drain(s, "h0")
    assert plan and all(m.source == "h0" and m.target != "h0" for m in plan)
    s.schedule(req("fill1", 4, 4))
    s.schedule(req("fill2", 4, 4))
    with pytest.raises(SchedError, match="cannot drain"):
        plan_drain(s, "h0")
    with pytest.raises(SchedError, match="unknown host"):
        plan_drain(s, "nope")
