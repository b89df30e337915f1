"""Property tests: capacity, hard anti-affinity, feasibility, quotas and planner moves hold for any input."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from virtkit.sched import Group, Host, Request, Scheduler, plan_consolidation, plan_drain
from virtkit.sched.model import EPS
from virtkit.sched.policies import POLICIES
from virtkit.sched.replay import replay

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
policies = st.sampled_from(sorted(POLICIES))
host_caps = st.lists(st.tuples(st.integers(1, 32), st.integers(1, 64)), min_size=1, max_size=8)
demands = st.tuples(st.integers(0, 16), st.integers(0, 40))


def make_hosts(caps: list[tuple[int, int]]) -> list[Host]:
    return [Host(f"h{i}", {"vcpus": c, "memory_mib": m}, {"zone": f"z{i % 3}"}) for i, (c, m) in enumerate(caps)]


def check_capacity(s: Scheduler) -> None:
    for h in s.hosts:
        total = [0.0] * len(s.resources)
        for r in h.residents.values():
            for i, x in enumerate(s.vector(r)):
                total[i] += x
        for i in range(len(total)):
            assert total[i] <= h.cap[i] + EPS, (h.name, s.resources[i])
            assert abs(total[i] - h.used[i]) < 1e-6


def check_anti_affinity(s: Scheduler) -> None:
    for g in s.groups.values():
        if g.policy != "anti-affinity" or not g.hard:
            continue
        places = [(h.index if g.scope == "host" else h.zone) for h in s.hosts for r in h.residents.values()
                  if g.name in r.groups]
        assert len(places) == len(set(places)), g


@SETTINGS
@given(caps=host_caps, reqs=st.lists(st.tuples(demands, st.integers(0, 3), st.booleans()), max_size=40),
       policy=policies, batch=st.booleans(), cpu_ratio=st.sampled_from([1.0, 2.0, 4.0]),
       scope=st.sampled_from(["host", "zone"]))
def test_capacity_and_anti_affinity_hold(caps, reqs, policy, batch, cpu_ratio, scope) -> None:  # type: ignore[no-untyped-def]
    groups = [Group("g", "anti-affinity", True, scope), Group("soft", "anti-affinity", False, "host")]
    s = Scheduler(make_hosts(caps), policy, ratios={"vcpus": cpu_ratio, "memory_mib": 1.0}, groups=groups)
    rs = [Request(f"r{i}", {"vcpus": c, "memory_mib": m}, priority=p, groups=("g",) if g else ("soft",))
          for i, ((c, m), p, g) in enumerate(reqs)]
    if batch:
        s.place_batch(rs)
    else:
        for r in rs:
            s.schedule(r)
    check_capacity(s)
    check_anti_affinity(s)


@SETTINGS
@given(caps=host_caps, events=st.lists(st.tuples(demands, st.integers(0, 50), st.integers(0, 50)), max_size=40),
       policy=policies, batch=st.booleans())
def test_capacity_holds_at_every_moment_of_a_replay(caps, events, policy, batch) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(make_hosts(caps), policy, ratios={"vcpus": 1.0, "memory_mib": 1.0},
                  groups=[Group("g", "anti-affinity", True, "host")])
    rs = [Request(f"r{i}", {"vcpus": c, "memory_mib": m}, arrival=float(a), departure=float(a + life),
                  groups=("g",) if i % 4 == 0 else ())
          for i, ((c, m), a, life) in enumerate(events)]

    def observe(t: float, s: Scheduler) -> None:
        check_capacity(s)
        check_anti_affinity(s)

    result = replay(s, rs, timed=True, batch=batch, observe=observe)
    # the same check from the outside, on the output alone, as an external checker would do it
    caps_by = {h.name: h.cap for h in s.hosts}
    times = sorted({r.arrival for r in rs if r.arrival is not None})
    for t in times:
        load: dict[str, list[float]] = {}
        for r in rs:
            host = result[r.id]
            assert r.arrival is not None and r.departure is not None
            if host and r.arrival <= t < r.departure or host and r.arrival == t == r.departure:
                acc = load.setdefault(host, [0.0, 0.0])
                acc[0] += r.demand["vcpus"]
                acc[1] += r.demand["memory_mib"]
        for host, (c, m) in load.items():
            assert c <= caps_by[host][0] + EPS and m <= caps_by[host][1] + EPS


@SETTINGS
@given(cap=st.tuples(st.integers(1, 64), st.integers(1, 256)), frac=st.tuples(st.floats(0, 1), st.floats(0, 1)),
       policy=policies, n_hosts=st.integers(1, 20))
def test_a_feasible_request_on_an_empty_host_is_never_rejected(cap, frac, policy, n_hosts) -> None:  # type: ignore[no-untyped-def]
    hosts = [Host(f"h{i}", {"vcpus": cap[0], "memory_mib": cap[1]}) for i in range(n_hosts)]
    s = Scheduler(hosts, policy, ratios={"vcpus": 1.0, "memory_mib": 1.0})
    # fill all hosts but the last, so the index has to look past them
    for h in s.hosts[:-1]:
        s.bind(Request(f"fill{h.index}", {"vcpus": cap[0], "memory_mib": cap[1]}), h)
    d = s.schedule(Request("r", {"vcpus": cap[0] * frac[0], "memory_mib": cap[1] * frac[1]}))
    assert d.host is not None
    if cap[0] * frac[0] > 1e-6 or cap[1] * frac[1] > 1e-6:  # below EPS a demand fits a full host too
        assert d.host == s.hosts[-1].name


@SETTINGS
@given(reqs=st.lists(st.tuples(demands, st.sampled_from(["a", "b", None])), max_size=40),
       limit=st.integers(0, 40), policy=policies)
def test_quotas_hold(reqs, limit, policy) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(make_hosts([(64, 256)] * 4), policy, ratios={"vcpus": 1.0, "memory_mib": 1.0},
                  quotas={"a": {"vcpus": limit}, "b": {"memory_mib": limit}})
    for i, ((c, m), p) in enumerate(reqs):
        s.schedule(Request(f"r{i}", {"vcpus": c, "memory_mib": m}, project=p))
        use = s.project_use
        assert use.get("a", [0.0, 0.0])[0] <= limit + EPS
        assert use.get("b", [0.0, 0.0])[1] <= limit + EPS


@SETTINGS
@given(caps=host_caps, reqs=st.lists(st.tuples(demands, st.booleans()), max_size=40), drain=st.integers(0, 7))
def test_planner_moves_are_feasible_in_order(caps, reqs, drain) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(make_hosts(caps), "spread", ratios={"vcpus": 1.0, "memory_mib": 1.0},
                  groups=[Group("g", "anti-affinity", True, "host")])
    for i, ((c, m), g) in enumerate(reqs):
        s.schedule(Request(f"r{i}", {"vcpus": c, "memory_mib": m}, groups=("g",) if g else ()))
    plans = [plan_consolidation(s)]
    try:
        plans.append(plan_drain(s, s.hosts[drain % len(s.hosts)].name))
    except Exception as e:  # noqa: BLE001 - an undrainable host is a valid answer
        assert "cannot drain" in str(e)
    for plan in plans:
        snapshot = {h.name: dict(h.residents) for h in s.hosts}
        assert len({m.request_id for m in plan}) == len(plan)
        assert not {m.target for m in plan} & {m.source for m in plan}
        for m in plan:
            r = s.by_name[m.source].residents[m.request_id]
            s.release(m.request_id)
            t = s.by_name[m.target]
            assert s.passes(t, r, s.vector(r)), m
            s.bind(r, t)
            check_capacity(s)
            check_anti_affinity(s)
        for m in reversed(plan):  # back to the snapshot for the next plan
            r = s.by_name[m.target].residents[m.request_id]
            s.release(m.request_id)
            s.bind(r, s.by_name[m.source])
        assert {h.name: dict(h.residents) for h in s.hosts} == snapshot


@SETTINGS
@given(caps=host_caps, reqs=st.lists(st.tuples(demands, st.integers(0, 3)), max_size=40), policy=policies)
def test_preemption_evicts_only_lower_priority_and_only_when_needed(caps, reqs, policy) -> None:  # type: ignore[no-untyped-def]
    s = Scheduler(make_hosts(caps), policy, ratios={"vcpus": 1.0, "memory_mib": 1.0})
    for i, ((c, m), p) in enumerate(reqs):
        r = Request(f"r{i}", {"vcpus": c, "memory_mib": m}, priority=p)
        d = s.vector(r)
        fits_somewhere = any(s.passes(h, r, d) for h in s.hosts)
        before = {rid: h.residents[rid].priority for rid, h in s.where.items()}
        dec = s.schedule(r)
        if dec.victims:
            assert not fits_somewhere
            assert dec.host is not None and "preempts" in dec.reason
            assert all(before[v] < p for v in dec.victims)
            assert all(v not in s.where for v in dec.victims)
        else:
            assert (dec.host is not None) == fits_somewhere
        check_capacity(s)
