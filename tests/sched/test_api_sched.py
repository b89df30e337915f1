"""The scheduler through a real virtkitd: /v1/sched/place, /explain, /policies via the SDK, and bad input as 400s."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.conftest import teardown_home
from virtkit.core.errors import InvalidArgument

pytestmark = pytest.mark.root

GIB = 1024


def host(name: str, cpu: float, mem_gib: float, **labels: str) -> dict[str, Any]:
    return {"name": name, "capacity": {"vcpus": cpu, "memory_mib": mem_gib * GIB}, "labels": labels}


def req(rid: str, cpu: float, mem_gib: float, **kw: Any) -> dict[str, Any]:
    return {"id": rid, "demand": {"vcpus": cpu, "memory_mib": mem_gib * GIB}, **kw}


HOSTS = [host("h1", 8, 16, zone="a"), host("h2", 4, 8, zone="b")]
ONE = {"vcpus": 1.0, "memory_mib": 1.0}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    if os.geteuid() != 0:
        pytest.skip("needs root: virtkitd starts its supervisor (CI runs as root)")
    from virtkit.client import connect

    home = str(tmp_path_factory.mktemp("vkhome"))
    yield connect(home)
    leaks = teardown_home(home)
    assert not leaks, f"virtkit left these behind: {leaks}"


def test_place_in_list_order_with_a_reason_for_each_rejection(client: Any) -> None:
    reqs = [req("a", 4, 8), req("b", 4, 8), req("c", 4, 8), req("d", 1, 1)]
    out = client.sched_place(HOSTS, reqs, policy="ffd", ratios=ONE)
    assert [(p["id"], p["host"]) for p in out["placements"]] == [("a", "h1"), ("b", "h1"), ("c", "h2"), ("d", None)]
    assert out["placed"] == 3 and out["rejected"] == 1 and out["policy"] == "ffd"
    assert out["placements"][3]["reason"] == "no host passes the filters"
    assert "reason" not in out["placements"][0]


def test_overcommit_defaults_to_novas_ratios(client: Any) -> None:
    reqs = [req(f"r{i}", 4, 1) for i in range(6)]  # 24 vCPU on 12 physical
    out = client.sched_place(HOSTS, reqs)
    assert out["ratios"] == {"vcpus": 4.0, "memory_mib": 1.0} and out["rejected"] == 0
    assert client.sched_place(HOSTS, reqs, ratios=ONE)["rejected"] == 3


def test_timed_replay_frees_capacity_at_departure(client: Any) -> None:
    reqs = [req("late", 8, 16, arrival=100, departure=200), req("first", 8, 16, arrival=0, departure=100),
            req("small", 4, 8, arrival=0), req("again", 8, 16, arrival=150)]
    out = client.sched_place(HOSTS, reqs, ratios=ONE)
    assert out["timed"] is True
    assert {p["id"]: p["host"] for p in out["placements"]} == {"late": "h1", "first": "h1", "small": "h2",
                                                                "again": None}


def test_labels_groups_priorities_and_quotas(client: Any) -> None:
    hosts = [host(f"h{i}", 8, 16, zone="a" if i < 2 else "b") for i in range(3)]
    reqs = [req("w1", 1, 1, groups=["web"]), req("w2", 1, 1, groups=["web"]), req("w3", 1, 1, groups=["web"]),
            req("w4", 1, 1, groups=["web"]),
            req("zb", 1, 1, labels={"zone": "b"}), req("p1", 1, 1, project="p"), req("p2", 1, 1, project="p")]
    out = client.sched_place(hosts, reqs, ratios=ONE, groups=[{"name": "web", "policy": "anti-affinity"}],
                             quotas={"p": {"instances": 1}})
    at = {p["id"]: p for p in out["placements"]}
    assert len({at[w]["host"] for w in ("w1", "w2", "w3")}) == 3 and at["w4"]["host"] is None
    assert at["zb"]["host"] == "h2"
    assert at["p1"]["host"] is not None and at["p2"]["host"] is None and "quota" in at["p2"]["reason"]
    # a higher priority evicts the lower one when nothing else fits, and both answers say so
    full = [host("only", 8, 16)]
    out = client.sched_place(full, [req("low", 8, 8), req("high", 8, 8, priority=5)], ratios=ONE)
    at = {p["id"]: p for p in out["placements"]}
    assert at["high"]["host"] == "only" and "preempts 1" in at["high"]["reason"]
    assert at["low"]["host"] is None and "preempted by 'high'" in at["low"]["reason"]


def test_batch_places_what_one_by_one_cannot(client: Any) -> None:
    hosts = [host("h1", 4, 4), host("h2", 4, 4)]
    reqs = [req("s1", 1, 1), req("s2", 1, 1), req("s3", 1, 1), req("s4", 1, 1), req("big", 4, 4)]
    one_by_one = client.sched_place(hosts, reqs, policy="spread", ratios=ONE)
    assert one_by_one["rejected"] == 1
    assert client.sched_place(hosts, reqs, policy="spread", ratios=ONE, batch=True)["rejected"] == 0


def test_explain_names_each_filter_and_each_score(client: Any) -> None:
    hosts = [host("h1", 8, 16, zone="a"), host("h2", 4, 8, zone="b"), host("h3", 8, 16, zone="b")]
    reqs = [req("fill", 6, 4, labels={"zone": "b"}), req("x", 4, 4, labels={"zone": "b"})]
    e = client.sched_explain(hosts, reqs, "x", policy="pack", ratios=ONE)
    assert e["request"] == "x" and e["policy"] == "pack" and e["demand"] == {"vcpus": 4, "memory_mib": 4096}
    rows = {r["host"]: r for r in e["hosts"]}
    assert rows["h1"]["status"] == "filtered" and rows["h1"]["filter"] == "labels"
    assert rows["h1"]["reason"] == "label zone=b wanted, host has zone=a"
    # "fill" went to one of the zone-b hosts before x came; that host is now too small
    full = next(r for r in e["hosts"] if r["host"] != "h1" and r["status"] == "filtered")
    assert full["filter"] == "capacity" and "vcpus short by" in full["reason"]
    scored = [r for r in e["hosts"] if r["status"] == "scored"]
    assert len(scored) == 1 and e["decision"] == scored[0]["host"]
    assert set(scored[0]["breakdown"]) == {"most_allocated"} and scored[0]["score"] > 0


def test_explain_of_a_rejected_request(client: Any) -> None:
    e = client.sched_explain(HOSTS, [req("huge", 64, 1)], "huge", ratios=ONE)
    assert e["decision"] is None and e["reason"] == "no host passes the filters"
    assert {r["host"]: r["filter"] for r in e["hosts"]} == {"h1": "capacity", "h2": "capacity"}


def test_policies(client: Any) -> None:
    pols = client.sched_policies()
    names = [p["name"] for p in pols]
    assert {"virtkit", "spread", "pack", "nova", "bestfit", "ffd", "tetris", "random"} <= set(names)
    assert [p["name"] for p in pols if p["default"]] == ["virtkit"] and all(p["description"] for p in pols)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.pop("hosts"), "hosts: missing"),
    (lambda b: b.update(hosts={"h1": 1}), "hosts: must be a list, got an object"),
    (lambda b: b["hosts"][1]["capacity"].pop("memory_mib"), "hosts[1].capacity.memory_mib: missing"),
    (lambda b: b["hosts"][0]["capacity"].update(vcpus="8"), "hosts[0].capacity.vcpus: must be a finite number"),
    (lambda b: b["hosts"].append(host("h1", 1, 1)), "hosts[2].name: duplicate host 'h1'"),
    (lambda b: b["requests"][1]["demand"].update(vcpus=-2), "requests[1].demand.vcpus: must be zero or more"),
    (lambda b: b["requests"][0].pop("demand"), "requests[0].demand: missing"),
    (lambda b: b["requests"][0]["demand"].pop("vcpus"), "requests[0].demand.vcpus: missing"),
    (lambda b: b.update(policy=["ffd"]), "policy: unknown policy ['ffd']"),
    (lambda b: b["requests"][1].update(labels={"zone": 1}), "requests[1].labels.zone: must be a string, got 1"),
    (lambda b: b["requests"][0]["demand"].update(gpus=1), "requests[0].demand.gpus: unknown resource"),
    (lambda b: b["requests"][1].update(id="a"), "requests[1].id: duplicate id 'a'"),
    (lambda b: b["requests"][0].update(cpus=2), "requests[0].cpus: unknown field"),
    (lambda b: b["requests"][0].update(groups=["nope"]), "requests[0].groups[0]: unknown group 'nope'"),
    (lambda b: b["requests"][0].update(priority=1.5), "requests[0].priority: must be a whole number"),
    (lambda b: b["requests"][0].update(arrival=5), "requests[1].arrival: missing"),
    (lambda b: b["requests"][0].update(arrival=5, departure=1), "requests[0].departure: 1 is before arrival 5"),
    (lambda b: b.update(policy="fastest"), "policy: unknown policy 'fastest'"),
    (lambda b: b.update(ratios={"vcpus": 0}), "ratios.vcpus: must be positive"),
    (lambda b: b.update(groups=[{"name": "g", "scope": "rack"}]), "groups[0].scope: must be host or zone"),
    (lambda b: b.update(quotas={"p": {"disks": 1}}), "quotas: quota of project 'p': unknown resource 'disks'"),
    (lambda b: b.update(quotas={"p": {"instances": 1.5}}), "quotas.p.instances: must be a whole number"),
    (lambda b: b.update(batch="yes"), "batch: must be true or false"),
])
def test_bad_input_names_the_field(client: Any, change: Any, message: str) -> None:
    body: dict[str, Any] = {"hosts": json.loads(json.dumps(HOSTS)), "requests": [req("a", 1, 1), req("b", 1, 1)]}
    change(body)
    with pytest.raises(InvalidArgument) as exc:
        client.t.request("POST", "/v1/sched/place", body)
    assert message in exc.value.message


def test_explain_bad_id(client: Any) -> None:
    with pytest.raises(InvalidArgument, match="id: no request with id 'zz' in requests"):
        client.sched_explain(HOSTS, [req("a", 1, 1)], "zz")
    with pytest.raises(InvalidArgument, match="id: must be a non-empty string"):
        client.t.request("POST", "/v1/sched/explain", {"hosts": HOSTS, "requests": []})


def _raw(client: Any, body: bytes) -> tuple[int, dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(client.socket_path)
        s.sendall(b"POST /v1/sched/place HTTP/1.1\r\nHost: virtkit\r\nConnection: close\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload)


def test_bad_json_and_wrong_types_are_400_with_the_error_body(client: Any) -> None:
    status, body = _raw(client, b'{"hosts": [')
    assert status == 400 and body["error"] == "invalid_argument"
    assert body["message"].startswith("body: not valid JSON")
    status, body = _raw(client, b"[1, 2]")
    assert status == 400 and body["message"] == "body: must be an object, got a list"
    status, body = _raw(client, json.dumps({"hosts": HOSTS, "requests": [req("a", 1, 1)], "policy": "ffd"}).encode())
    assert status == 200 and body["placements"][0]["host"] == "h1"
