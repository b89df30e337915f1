"""The replay command through a subprocess: the CSV contract, replay with departures, explain, bad input."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest

HOSTS = "host,vcpus,memory_mib,disk_gib,labels\nh1,8,16384,100,zone=a;rack=r1\nh2,4,8192,50,zone=b\n"


def run(tmp_path: Path, hosts: str, reqs: str, *args: str, cmd: str = "place") -> subprocess.CompletedProcess[str]:
    (tmp_path / "hosts.csv").write_text(hosts)
    (tmp_path / "reqs.csv").write_text(reqs)
    return subprocess.run(
        [sys.executable, "-m", "virtkit.sched.cli", cmd, "--hosts", str(tmp_path / "hosts.csv"),
         "--requests", str(tmp_path / "reqs.csv"), *args],
        capture_output=True, text=True, timeout=60,
    )


def rows(out: str) -> list[tuple[str, str]]:
    r = list(csv.reader(io.StringIO(out)))
    assert r[0] == ["id", "host"]
    return [(a, b) for a, b in r[1:]]


def test_place_in_file_order(tmp_path: Path) -> None:
    p = run(tmp_path, HOSTS, "id,vcpus,memory_mib\na,4,8192\nb,4,8192\nc,4,8192\nd,1,1\n", "--policy", "ffd")
    assert p.returncode == 0, p.stderr
    assert rows(p.stdout) == [("a", "h1"), ("b", "h1"), ("c", "h2"), ("d", "")]


def test_ratios_and_batch(tmp_path: Path) -> None:
    reqs = "id,vcpus,memory_mib\n" + "".join(f"r{i},4,1000\n" for i in range(6))
    p = run(tmp_path, HOSTS, reqs)
    assert sum(1 for _, h in rows(p.stdout) if h) == 3  # 8 + 4 vCPUs at ratio 1.0
    p = run(tmp_path, HOSTS, reqs, "--cpu-ratio", "2", "--batch")
    assert p.returncode == 0 and all(h for _, h in rows(p.stdout))
    p = run(tmp_path, HOSTS, "id,vcpus,memory_mib\nr,1,20000\n", "--mem-ratio", "1.5")
    assert rows(p.stdout) == [("r", "h1")]


def test_replay_with_departures_frees_capacity(tmp_path: Path) -> None:
    reqs = ("id,vcpus,memory_mib,arrival_s,departure_s\n"
            "late,8,16384,100,200\nfirst,8,16384,0,100\nsmall,4,8192,0,\nagain,8,16384,150,\n")
    p = run(tmp_path, HOSTS, reqs)
    assert p.returncode == 0, p.stderr
    assert rows(p.stdout) == [("late", "h1"), ("first", "h1"), ("small", "h2"), ("again", "")]


def test_extra_columns_and_disk(tmp_path: Path) -> None:
    hosts = "host,vcpus,memory_mib,disk_gib,note,gpus\nh1,8,16384,100,old,0\nh2,8,16384,50,new,2\n"
    reqs = "id,vcpus,memory_mib,disk_gib,comment,gpus\na,1,1,80,x,0\nb,1,1,80,y,0\nc,1,1,1,z,1\nd,1,1,1,,3\n"
    p = run(tmp_path, hosts, reqs, "--policy", "ffd")
    assert p.returncode == 0, p.stderr
    assert rows(p.stdout) == [("a", "h1"), ("b", ""), ("c", "h2"), ("d", "")]
    p = run(tmp_path, HOSTS.replace(",disk_gib", "").replace(",100,", ",").replace(",50,", ","),
            "id,vcpus,memory_mib,disk_gib\na,1,1,500\n")
    assert rows(p.stdout)[0][1] != ""  # hosts without disk_gib: disk is not scheduled


def test_anti_affinity_and_groups(tmp_path: Path) -> None:
    reqs = "id,vcpus,memory_mib,group,anti_affinity\na,1,1,web,1\nb,1,1,web,1\nc,1,1,web,1\nd,1,1,,web\n"
    p = run(tmp_path, HOSTS, reqs)
    assert p.returncode == 0, p.stderr
    out = dict(rows(p.stdout))
    assert out["a"] != out["b"] and out["c"] == "" and out["d"] == ""


def test_priority_preempts(tmp_path: Path) -> None:
    reqs = "id,vcpus,memory_mib,priority\nlow,8,16384,0\nlow2,4,8192,0\nhigh,8,1000,5\n"
    out = dict(rows(run(tmp_path, HOSTS, reqs).stdout))
    assert out == {"low": "", "low2": "h2", "high": "h1"}
    p = run(tmp_path, HOSTS, reqs, "--id", "high", cmd="explain")
    assert p.returncode == 0, p.stderr
    assert "decision: h1 (preempting low)" in p.stdout
    assert "preempts 1 request(s) of lower priority than 5" in p.stdout


def test_preemption_in_a_timed_replay(tmp_path: Path) -> None:
    # the victim is evicted (empty host); its departure later is a no-op; the freed room is reused
    reqs = ("id,vcpus,memory_mib,priority,arrival_s,departure_s\n"
            "low,8,16384,0,0,500\nlow2,4,8192,0,0,\nhigh,8,1000,5,10,100\nafter,8,16384,0,200,\n")
    out = dict(rows(run(tmp_path, HOSTS, reqs).stdout))
    assert out == {"low": "", "low2": "h2", "high": "h1", "after": "h1"}


@pytest.mark.parametrize("policy", ["virtkit", "spread", "pack", "nova", "bestfit", "ffd", "tetris", "random"])
def test_every_policy_runs(tmp_path: Path, policy: str) -> None:
    p = run(tmp_path, HOSTS, "id,vcpus,memory_mib\na,2,2048\nb,2,2048\n", "--policy", policy)
    assert p.returncode == 0 and all(h for _, h in rows(p.stdout))


def test_explain(tmp_path: Path) -> None:
    reqs = "id,vcpus,memory_mib\nfill,6,1000\nr,4,1000\n"
    p = run(tmp_path, HOSTS, reqs, "--id", "r", cmd="explain")
    assert p.returncode == 0, p.stderr
    assert "h1: filtered by capacity: vcpus short by 2 (needs 4, free 2 of 8)" in p.stdout
    assert "* h2: score" in p.stdout and "decision: h2" in p.stdout
    p = run(tmp_path, HOSTS, reqs, "--id", "r", "--json", cmd="explain")
    import json

    e = json.loads(p.stdout)
    assert e["decision"] == "h2" and e["hosts"][0]["filter"] == "capacity"
    p = run(tmp_path, HOSTS, reqs, "--id", "nope", cmd="explain")
    assert p.returncode == 2 and "no request with id 'nope'" in p.stderr


@pytest.mark.parametrize(("hosts", "reqs", "args", "message"), [
    ("host,vcpus\nh1,8\n", "id,vcpus,memory_mib\na,1,1\n", (), "hosts.csv: line 1: missing column(s) memory_mib"),
    (HOSTS, "id,vcpus\na,1\n", (), "reqs.csv: line 1: missing column(s) memory_mib"),
    (HOSTS, "id,vcpus,memory_mib\na,1,1\nb,-2,1\n", (), "reqs.csv: line 3, column vcpus: must not be negative"),
    ("host,vcpus,memory_mib\nh1,8,x\n", "id,vcpus,memory_mib\na,1,1\n", (), "hosts.csv: line 2, column memory_mib"),
    (HOSTS, "id,vcpus,memory_mib\na,1,1\na,1,1\n", (), "reqs.csv: line 3, column id: duplicate id 'a'"),
    ("host,vcpus,memory_mib\nh,1,1\nh,1,1\n", "id,vcpus,memory_mib\na,1,1\n", (), "line 3, column host: duplicate"),
    (HOSTS, "id,vcpus,memory_mib,group,anti_affinity\na,1,1,web,\nb,1,1,,db\n", (),
     "reqs.csv: line 3, column anti_affinity: unknown group reference 'db'"),
    (HOSTS, "id,vcpus,memory_mib,anti_affinity\na,1,1,1\n", (), "line 2, column anti_affinity"),
    (HOSTS, "id,vcpus,memory_mib,arrival_s,departure_s\na,1,1,10,5\n", (), "line 2, column departure_s"),
    (HOSTS, "id,vcpus,memory_mib\na,1,\n", (), "line 2, column memory_mib: value missing"),
    (HOSTS, "id,vcpus,memory_mib\na,1,1\n", ("--policy", "best"), "invalid choice: 'best'"),
    (HOSTS, "id,vcpus,memory_mib\na,1,1\n", ("--cpu-ratio", "-1"), "must be a positive number"),
])
def test_bad_input(tmp_path: Path, hosts: str, reqs: str, args: tuple[str, ...], message: str) -> None:
    p = run(tmp_path, hosts, reqs, *args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr and "Traceback" not in p.stderr


def test_missing_file(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "virtkit.sched.cli", "place", "--hosts", str(tmp_path / "no.csv"),
                        "--requests", str(tmp_path / "no.csv")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no.csv: cannot read" in p.stderr
