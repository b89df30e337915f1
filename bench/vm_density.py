#!/usr/bin/env python3
"""Memory of idle VMs, with and without KSM (`virtkit system ksm`), in one run.

    .venv/bin/python bench/vm_density.py [--vms 3] [--settle 5] [--ksm-wait 10]

Starts N idle busybox VMs (`sleep`, no network) in a private virtkit home, waits until each printed its first
line and `--settle` seconds more, then sums the PSS and RSS of their QEMU processes (and of their waiters) with
KSM off; then turns KSM on through the SDK, waits `--ksm-wait` seconds and sums again. KSM is host-wide: its
settings are put back as they were at the end (merged pages unmerged first), also on failure.
Results: bench/results/vm_density.json and vm_density.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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

from lib import common, procmem  # noqa: E402

KSM = "/sys/kernel/mm/ksm"
KSM_FILES = ("run", "pages_to_scan", "sleep_millisecs")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(client: Any, names: list[str]) -> dict[str, Any]:
    qemus = [int(client.instance(n)["pid"]) for n in names]
    tree = procmem.ppids()
    waiters = [pid for pid, parent in tree.items() if parent in qemus or pid in {tree.get(q) for q in qemus}]
    q = procmem.total(qemus)
    return {"qemu": q, "qemu_pss_mib_per_vm": round(q["pss_kib"] / 1024 / len(names), 1),
            "qemu_rss_mib_per_vm": round(q["rss_kib"] / 1024 / len(names), 1),
            "waiters": procmem.total(p for p in waiters if "python" in procmem.comm_of(p)),
            "ksm": client.ksm()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vms", type=int, default=3)
    ap.add_argument("--settle", type=float, default=5.0)
    ap.add_argument("--ksm-wait", type=float, default=10.0)
    ap.add_argument("--out", default=str(BENCH / "results" / "vm_density.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        ap.error("needs root (VMs, KSM)")
    if not os.path.isdir(KSM):
        ap.error("this kernel has no KSM (/sys/kernel/mm/ksm)")
    saved = {n: Path(KSM, n).read_text().strip() for n in KSM_FILES}
    home = tempfile.mkdtemp(prefix="vkdensity-")
    os.environ["VIRTKIT_HOME"] = home
    from virtkit.client import connect

    client = connect(home)
    names = [f"idle{i}" for i in range(args.vms)]
    out: dict[str, Any] = {"host": common.host_facts({"qemu": ["qemu-system-x86_64", "--version"]}),
                           "vms": args.vms, "guest": "busybox initramfs, `sleep`, 1 vCPU, default memory, no network",
                           "ksm_before_run": saved}
    try:
        client.ksm(False)
        client.build_image("busybox")
        for n in names:
            client.run("busybox", ["sh", "-c", "echo up; exec sleep 100000"], detach=True, name=n, type="vm",
                       network="none")
        for n in names:
            deadline = time.monotonic() + 180
            while b"up" not in b"".join(client.logs(n)) and time.monotonic() < deadline:
                time.sleep(0.2)
        out["spec"] = client.instance(names[0])["spec"]
        time.sleep(args.settle)
        out["ksm_off"] = measure(client, names)
        log(f"KSM off: QEMU PSS {out['ksm_off']['qemu_pss_mib_per_vm']} MiB per VM")
        client.ksm(True)
        time.sleep(args.ksm_wait)
        out["ksm_on"] = measure(client, names)
        log(f"KSM on: QEMU PSS {out['ksm_on']['qemu_pss_mib_per_vm']} MiB per VM")
        out["ratio_pss_on_over_off"] = common.ratio(out["ksm_on"]["qemu"]["pss_kib"], out["ksm_off"]["qemu"]["pss_kib"])
    finally:
        try:
            client.ksm(False)
        except Exception as exc:  # noqa: BLE001 - the settings are put back below either way
            log(f"ksm off: {exc}")
        for n in KSM_FILES[1:] + KSM_FILES[:1]:
            Path(KSM, n).write_text(saved[n])
        for n in names:
            try:
                client.remove(n, force=True)
            except Exception as exc:  # noqa: BLE001
                log(f"rm {n}: {exc}")
        client.shutdown()
        time.sleep(1)
        shutil.rmtree(home, ignore_errors=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    md = [
        "# Idle VM memory: KSM off and on", "",
        f"{out['host']['date']} on {out['host']['cpu_model']} ({out['host']['cpus']} CPUs), kernel "
        f"{out['host']['kernel']}; {args.vms} idle busybox VMs (QEMU microvm, TCG here), {args.settle:g} s settled; "
        f"KSM on for {args.ksm_wait:g} s at virtkit's scan rate (vm/ksm.py).", "",
        "| KSM | QEMU PSS per VM, MiB | QEMU RSS per VM, MiB | pages shared by KSM | waiters' PSS total, MiB |",
        "|---|---|---|---|---|",
    ]
    for key in ("ksm_off", "ksm_on"):
        m = out[key]
        md.append(f"| {key[4:]} | {m['qemu_pss_mib_per_vm']} | {m['qemu_rss_mib_per_vm']} | "
                  f"{m['ksm'].get('pages_sharing')} | {round(m['waiters']['pss_kib'] / 1024, 1)} |")
    md += ["", f"PSS with KSM on / off: **{out['ratio_pss_on_over_off']}**. RSS counts shared pages in full in every "
           "process; PSS splits them among their sharers, so it is the one that adds up to the host's use.", "",
           "Raw figures: `vm_density.json`. Produced by `bench/vm_density.py`."]
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    log("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
