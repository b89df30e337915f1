#!/usr/bin/env python3
"""virtkit's network benchmark: throughput and latency on a virtkit network beside a hand-made veth+bridge
pair, in one run; and the network setup time per instance.

    .venv/bin/python bench/network.py [--runs 5] [--seconds 3] [--setup-runs 30]

Parts:
  c2c      iperf3 container -> container on one virtkit network (the servers and clients run in the instances'
           own network namespaces through nsenter: the busybox image has no iperf3) vs the same between two
           namespaces on a bridge made by hand with `ip`. Goal: >= 90% of the hand-made pair.
  forward  iperf3 host -> 127.0.0.1:PORT published with -p (DNAT) vs host -> the hand-made namespace's address
           directly. Goal: >= 80%.
  ping     round trip (TCP SYN -> RST) container -> container vs hand-made (for the record).
  setup    NetworkService.prepare (address lease, namespace, veth on the bridge, address, route, nft rules,
           hosts) until the instance's address answers a first packet (a TCP SYN to a closed port: the RST).
           Goal: median under 50 ms.

Timed runs are interleaved (virtkit, hand-made, virtkit, ...). Everything lives under a temp dir and a private
VIRTKIT_HOME and is removed at the end, also on failure. Results: bench/results/network.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from lib import common  # noqa: E402

GOALS = {"c2c": 0.90, "forward": 0.80, "setup_ms": 50.0}


def sh(*argv: str, timeout: float = 60) -> str:
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


class Handmade:
    """A bridge and two namespaces with veths, made with `ip` as an administrator would."""

    def __init__(self, tmp: str, tag: str) -> None:
        from virtkit.net import netns

        self.br, self.tag = f"vkhb{tag}", tag
        self.ns = [os.path.join(tmp, f"hns{i}") for i in range(2)]
        self.addr = ["10.251.77.2", "10.251.77.3"]
        sh("ip", "link", "add", self.br, "type", "bridge")
        sh("ip", "addr", "add", "10.251.77.1/24", "dev", self.br)
        sh("ip", "link", "set", self.br, "up")
        for i, path in enumerate(self.ns):
            netns.create(path)
            host = f"vkhv{tag}{i}"
            sh("ip", "link", "add", host, "type", "veth", "peer", "name", f"vkhp{tag}{i}")
            sh("ip", "link", "set", f"vkhp{tag}{i}", "netns", path)
            sh("ip", "link", "set", host, "master", self.br, "up")
            ns = ["nsenter", f"--net={path}", "ip"]
            sh(*ns, "link", "set", "lo", "up")
            sh(*ns, "link", "set", f"vkhp{tag}{i}", "name", "eth0")
            sh(*ns, "addr", "add", f"{self.addr[i]}/24", "dev", "eth0")
            sh(*ns, "link", "set", "eth0", "up")
            sh(*ns, "route", "add", "default", "via", "10.251.77.1")

    def close(self) -> None:
        from virtkit.net import netns

        subprocess.run(["ip", "link", "del", self.br], capture_output=True)
        for i, path in enumerate(self.ns):
            subprocess.run(["ip", "link", "del", f"vkhv{self.tag}{i}"], capture_output=True)
            netns.remove(path)


def iperf(server_ns: str | None, client_ns: str | None, target: str, port: int, connect_port: int,
          seconds: float) -> float:
    """Gbit/s of one iperf3 TCP run (server on `port`, the client connects to target:connect_port)."""
    pre_s = ["nsenter", f"--net={server_ns}"] if server_ns else []
    pre_c = ["nsenter", f"--net={client_ns}"] if client_ns else []
    server = subprocess.Popen(pre_s + ["iperf3", "-s", "-1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            r = subprocess.run(pre_c + ["iperf3", "-c", target, "-p", str(connect_port), "-t", str(seconds), "-J"],
                               capture_output=True, text=True, timeout=seconds + 30)
            end = json.loads(r.stdout or "{}").get("end", {}) if r.returncode == 0 else {}
            if "sum_received" in end:
                return float(end["sum_received"]["bits_per_second"]) / 1e9
            time.sleep(0.05)               # the server was not listening yet
        raise RuntimeError(f"iperf3 to {target}:{connect_port} failed: {r.stdout[-300:]} {r.stderr[-300:]}")
    finally:
        server.kill()
        server.wait()


def ping_ms(client_ns: str, target: str, count: int = 50) -> float:
    """Median round trip of a TCP SYN to a closed port and its RST, from inside `client_ns` (the host has no
    ping binary; this needs none)."""
    from virtkit.net import netns

    def probe() -> float:
        rtts = []
        for _ in range(count):
            s = socket.socket()
            t0 = time.perf_counter()
            try:
                s.connect((target, 1))
            except ConnectionRefusedError:
                rtts.append((time.perf_counter() - t0) * 1000)
            finally:
                s.close()
        return common.percentile(rtts, 0.5)

    return netns.run_in(client_ns, probe)


def first_packet(address: str, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(0.2)
        try:
            s.connect((address, 1))
        except ConnectionRefusedError:
            return                        # the RST came back: the path works
        except OSError:
            time.sleep(0.001)
        finally:
            s.close()
    raise RuntimeError(f"{address} never answered")


def setup_times(tmp: str, runs: int) -> dict[str, Any]:
    """prepare -> first packet, in-process on a home of its own; removed after each."""
    from virtkit.config import Home
    from virtkit.core.models import Instance
    from virtkit.core.networks import NetworkService
    from virtkit.core.options import validate_create
    from virtkit.net.fabric import NetFabric
    from virtkit.store.sqlite import SQLiteStore

    home = Home(os.path.join(tmp, "setup-home"))
    home.ensure()
    store = SQLiteStore(home.db)
    svc = NetworkService(store, NetFabric(home))
    prep, total = [], []
    try:
        svc.create({"name": "bench"})
        for i in range(runs + 1):
            inst = Instance(id=secrets.token_hex(16), name=f"s{i}", type="container", state="created",
                            image="busybox", spec=validate_create({"image": "busybox", "network": "bench"}),
                            created_at=time.time())
            store.add_instance(inst)
            t0 = time.perf_counter()
            svc.prepare(inst)
            t1 = time.perf_counter()
            first_packet(inst.spec["net"]["address"])
            t2 = time.perf_counter()
            if i:                        # the first is a warm-up
                prep.append((t1 - t0) * 1000)
                total.append((t2 - t0) * 1000)
            store.delete_instance(inst.id)
            svc.removed(inst)
    finally:
        for inst in store.list_instances():
            store.delete_instance(inst.id)
            svc.removed(inst)
        for net in store.list_networks():
            svc.remove(net.name)
        svc.shutdown()
        store.close()
    return {"prepare_ms": common.summary(prep), "create_to_first_packet_ms": common.summary(total)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3)
    ap.add_argument("--setup-runs", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("iperf3"):
        print("needs root and iperf3 (apt-get install iperf3)", file=sys.stderr)
        return 2
    from virtkit.client import connect

    tmp = tempfile.mkdtemp(prefix="vkbench-net-")
    home = os.path.join(tmp, "home")
    tag = secrets.token_hex(2)
    hand: Handmade | None = None
    results: dict[str, Any] = {"host": common.host_facts({"iperf3": ["iperf3", "--version"],
                                                          "nft": ["nft", "--version"]})}
    try:
        c = connect(home)
        c.build_image("busybox")
        c.create_network("bench", nat=True)
        port = free_port()
        c.run("busybox", ["sleep", "100000"], detach=True, name="a", network="bench",
              ports=[f"127.0.0.1:{port}:5201"])
        c.run("busybox", ["sleep", "100000"], detach=True, name="b", network="bench")
        a, b = (c.instance(n)["spec"]["net"] for n in ("a", "b"))
        hand = Handmade(tmp, tag)
        samples: dict[str, list[float]] = {k: [] for k in ("vk_c2c", "hand_c2c", "vk_fwd", "hand_direct",
                                                           "vk_ping", "hand_ping")}
        for r in range(args.runs):
            print(f"run {r + 1}/{args.runs}", file=sys.stderr, flush=True)
            samples["vk_c2c"].append(iperf(a["netns"], b["netns"], a["address"], 5201, 5201, args.seconds))
            samples["hand_c2c"].append(iperf(hand.ns[0], hand.ns[1], hand.addr[0], 5201, 5201, args.seconds))
            samples["vk_fwd"].append(iperf(a["netns"], None, "127.0.0.1", 5201, port, args.seconds))
            samples["hand_direct"].append(iperf(hand.ns[0], None, hand.addr[0], 5201, 5201, args.seconds))
            samples["vk_ping"].append(ping_ms(b["netns"], a["address"]))
            samples["hand_ping"].append(ping_ms(hand.ns[1], hand.addr[0]))
        med = {k: common.summary(v, 3) for k, v in samples.items()}
        results["throughput_gbit_s"] = {k: med[k] for k in ("vk_c2c", "hand_c2c", "vk_fwd", "hand_direct")}
        results["ping_rtt_ms"] = {k: med[k] for k in ("vk_ping", "hand_ping")}
        results["ratios"] = {
            "c2c": common.ratio(med["vk_c2c"]["median"], med["hand_c2c"]["median"]),
            "forward": common.ratio(med["vk_fwd"]["median"], med["hand_direct"]["median"]),
            "ping": common.ratio(med["vk_ping"]["median"], med["hand_ping"]["median"]),
        }
        c.remove("a", force=True)
        c.remove("b", force=True)
        c.remove_network("bench")
        results["setup"] = setup_times(tmp, args.setup_runs)
    finally:
        if hand:
            hand.close()
        sys.path.insert(0, str(REPO))
        from tests.e2e.conftest import teardown_home

        leaks = teardown_home(home)
        shutil.rmtree(tmp, ignore_errors=True)
        if leaks:
            print(f"leaked: {leaks}", file=sys.stderr)
    setup_med = results["setup"]["create_to_first_packet_ms"]["median"]
    results["goals"] = {
        "c2c >= 90% of hand-made": results["ratios"]["c2c"] >= GOALS["c2c"],
        "forward >= 80% of direct": results["ratios"]["forward"] >= GOALS["forward"],
        "setup median < 50 ms": setup_med < GOALS["setup_ms"],
    }
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    (out / "network.json").write_text(json.dumps(results, indent=2) + "\n")
    t, p = results["throughput_gbit_s"], results["ping_rtt_ms"]
    lines = [
        "# network benchmark", "",
        f"{results['host']['date']}, {results['host']['cpus']} CPUs, kernel {results['host']['kernel']}; "
        f"{args.runs} interleaved runs of {args.seconds:g} s; medians (min-max).", "",
        "| path | virtkit | hand-made | ratio | goal |", "|---|---|---|---|---|",
        f"| container -> container, Gbit/s | {t['vk_c2c']['median']} ({t['vk_c2c']['min']}-{t['vk_c2c']['max']}) "
        f"| {t['hand_c2c']['median']} ({t['hand_c2c']['min']}-{t['hand_c2c']['max']}) | {results['ratios']['c2c']} "
        f"| >= 0.90 |",
        f"| host -> forwarded port (vs direct), Gbit/s | {t['vk_fwd']['median']} "
        f"({t['vk_fwd']['min']}-{t['vk_fwd']['max']}) | {t['hand_direct']['median']} "
        f"({t['hand_direct']['min']}-{t['hand_direct']['max']}) | {results['ratios']['forward']} | >= 0.80 |",
        f"| ping RTT, ms | {p['vk_ping']['median']} | {p['hand_ping']['median']} | {results['ratios']['ping']} | - |",
        "", f"Setup per instance (prepare -> first packet): median {setup_med} ms "
        f"(prepare alone {results['setup']['prepare_ms']['median']} ms, "
        f"max {results['setup']['create_to_first_packet_ms']['max']} ms); goal < 50 ms.", "",
    ]
    (out / "network.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
