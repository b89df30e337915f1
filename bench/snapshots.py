#!/usr/bin/env python3
"""Snapshot speed: `virtkit snapshot` of a running container with ~1 GiB of changes beside `cp -a` of the
same upper dir, in one run.

    .venv/bin/python bench/snapshots.py [--runs 5] [--big-mib 900] [--small 5000] [--small-kib 20]

The container (busybox, running `sleep`) writes its changes itself through overlayfs: `--big-mib` MiB in
100 MiB files of random bytes and `--small` files of `--small-kib` KiB in 50 directories (a package
install looks like the second kind). Then, after one warm-up each and interleaved (virtkit, cp, virtkit,
cp ...): the SDK's snapshot (HTTP, freeze, copy, thaw, record) timed end to end, and `cp -a UPPER DEST`
onto the same filesystem. Before every timed copy the previous one is removed and `sync` run, so
neither pays for the other's writeback. Everything lives under a private VIRTKIT_HOME in a temp dir,
removed at the end (also on failure). Results: bench/results/snapshots.json and snapshots.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

GOAL = 1.2          # virtkit snapshot median within 1.2x of cp -a


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def du_bytes(path: str) -> int:
    return int(subprocess.run(["du", "-s", "-B1", path], capture_output=True, text=True, check=True).stdout.split()[0])


def fill(client: Any, name: str, big_mib: int, small: int, small_kib: int) -> None:
    client.exec(name, ["mkdir", "-p", "/data"])
    for i in range(0, big_mib, 100):
        count = min(100, big_mib - i)
        r = client.exec(name, ["dd", "if=/dev/urandom", f"of=/data/big{i // 100}", "bs=1M", f"count={count}"])
        if r.exit_code != 0:
            raise RuntimeError(f"dd failed: {r.stderr.decode()}")
    per_dir = max(1, small // 50)
    script = (f"for d in $(seq 1 50); do mkdir -p /data/pkg$d; for f in $(seq 1 {per_dir}); do "
              f"head -c {small_kib * 1024} /dev/urandom > /data/pkg$d/f$f; done; done")
    if small:
        r = client.exec(name, ["sh", "-c", script])
        if r.exit_code != 0:
            raise RuntimeError(f"small files failed: {r.stderr.decode()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--big-mib", type=int, default=900)
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--small-kib", type=int, default=20)
    ap.add_argument("--out", default=str(BENCH / "results"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        log("needs root (containers, cgroups, mounts)")
        return 2

    from virtkit.client import connect

    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="vkbench-snap-", dir="/var/tmp")
    home = os.path.join(tmp, "home")
    cp_dest = os.path.join(tmp, "cp")
    client = connect(home)
    name = "bench-snap"
    samples: dict[str, list[float]] = {"virtkit-snapshot": [], "cp-a": []}
    cleanup: list[str] = []
    try:
        client.build_image("busybox")
        client.create("busybox", ["sleep", "100000"], name=name, start=True)
        iid = client.instance(name)["id"]
        upper = os.path.join(home, "containers", iid, "upper")
        log(f"writing {args.big_mib} MiB in big files and {args.small} x {args.small_kib} KiB files ...")
        t0 = time.monotonic()
        fill(client, name, args.big_mib, args.small, args.small_kib)
        log(f"  done in {time.monotonic() - t0:.1f}s; upper dir holds {du_bytes(upper) / 2**20:.0f} MiB")
        nfiles = sum(len(f) for _d, _s, f in os.walk(upper))

        def virtkit_once(i: int) -> float:
            for s in client.snapshots(name):
                client.remove_snapshot(name, s["name"])
            subprocess.run(["sync"], check=True)
            t = time.perf_counter()
            client.snapshot(name, f"s{i}")
            return (time.perf_counter() - t) * 1000

        def cp_once(i: int) -> float:
            shutil.rmtree(cp_dest, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            t = time.perf_counter()
            subprocess.run(["cp", "-a", upper, cp_dest], check=True)
            return (time.perf_counter() - t) * 1000

        contestants = (("virtkit-snapshot", virtkit_once), ("cp-a", cp_once))
        for label, fn in contestants:
            log(f"  warm-up {label}: {fn(0):.0f} ms")
        for i in range(1, args.runs + 1):
            for label, fn in contestants:
                samples[label].append(fn(i))
            log(f"  {i}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.0f} ms" for k, v in samples.items()))
        snap_dir = os.path.join(home, "snapshots", iid, f"s{args.runs}")
        sizes = {"upper": du_bytes(upper), "snapshot": du_bytes(snap_dir), "cp": du_bytes(cp_dest)}
        state_after = client.instance(name)["state"]
    finally:
        try:
            client.remove(name, force=True)
        except Exception as exc:  # noqa: BLE001
            cleanup.append(f"remove instance: {common.describe(exc)}")
        try:
            client.shutdown()
        except Exception as exc:  # noqa: BLE001
            cleanup.append(f"shutdown: {common.describe(exc)}")
        time.sleep(0.5)
        left = common.unmount_under(tmp)
        if left:
            cleanup.append(f"unmounted leftovers: {left}")
        shutil.rmtree(tmp, ignore_errors=True)

    v, c = common.summary(samples["virtkit-snapshot"]), common.summary(samples["cp-a"])
    r_med = common.ratio(v["median"], c["median"])
    result = {
        "benchmark": "snapshots",
        "host": common.host_facts({"cp": ["cp", "--version"]}),
        "config": {"runs": args.runs, "big_mib": args.big_mib, "small_files": args.small,
                   "small_kib": args.small_kib, "files_in_upper": nfiles, "bytes": sizes},
        "results": {"virtkit-snapshot": {**v, "unit": "ms", "raw": [round(x, 1) for x in samples["virtkit-snapshot"]]},
                    "cp-a": {**c, "unit": "ms", "raw": [round(x, 1) for x in samples["cp-a"]]},
                    "ratio_median": r_med, "ratio_min": common.ratio(v["min"], c["min"]),
                    "goal": f"virtkit snapshot median <= {GOAL}x cp -a", "met": r_med is not None and r_med <= GOAL},
        "notes": ["the container keeps running (frozen during each snapshot); state after the runs: "
                  f"{state_after}",
                  "virtkit's time is the whole SDK call: HTTP, cgroup freeze, copy, thaw, store record"],
        "cleanup": cleanup,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "snapshots.json"), "w") as f:
        json.dump(result, f, indent=2)
    h = result["host"]
    md = [
        "# Snapshot benchmark: virtkit snapshot vs cp -a",
        "",
        f"{h['date']} on {h['cpu_model']} ({h['cpus']} CPUs), kernel {h['kernel']}; {args.runs} interleaved runs "
        f"after one warm-up each. Upper dir: {sizes['upper'] / 2**20:.0f} MiB in {nfiles} files "
        f"({args.big_mib} MiB in 100 MiB files, {args.small} files of {args.small_kib} KiB). {h['versions']['cp']}.",
        "",
        "| contestant | median ms | min ms | max ms | raw |",
        "|---|---|---|---|---|",
        f"| virtkit snapshot (SDK, running container) | {v['median']} | {v['min']} | {v['max']} | "
        f"{result['results']['virtkit-snapshot']['raw']} |",
        f"| cp -a of the upper dir | {c['median']} | {c['min']} | {c['max']} | {result['results']['cp-a']['raw']} |",
        "",
        f"Ratio of medians: **{r_med}** (goal <= {GOAL}: {'met' if result['results']['met'] else 'NOT met'}).",
        "",
        "Raw figures and host facts: `snapshots.json`. Produced by `bench/snapshots.py`.",
    ]
    with open(os.path.join(args.out, "snapshots.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
