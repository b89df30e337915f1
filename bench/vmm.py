#!/usr/bin/env python3
"""Native VMM beside QEMU, one run, same guest, same accelerator: time to the guest's first serial byte, exit
round trips per second, and the VMM process's peak RSS.

    .venv/bin/python bench/vmm.py [--runs 10] [--loops 20000]

The guest (bench/guests/exit_loop.S, built here with gcc/ld into a PVH ELF) writes 'A' to COM1 at once, then
`--loops` OUTs to port 0x80, then 'B', then exits through port 0xf4. Both VMMs boot that same ELF through its
PVH entry: `virtkit-vmm --kernel G` and `qemu-system-x86_64 -M microvm,accel=kvm -kernel G` (isa-debug-exit on
0xf4). Per run: first byte = process start to 'A' on the serial pipe; exit rate = loops / time from 'A' to 'B';
peak RSS from wait4's rusage. Runs are interleaved (virtkit, qemu, virtkit, ...) after one warm-up each.
On a PVM host (see DESIGN.md) both run the guest under KVM's emulator; the ratio is what counts.
Results: bench/results/vmm.json and vmm.md.
"""

from __future__ import annotations

import argparse
import json
import os
import select
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

from lib import common  # noqa: E402

GOAL_FIRST_BYTE = 1.0    # virtkit's first byte sooner than QEMU's: ratio below 1
GOAL_EXIT_RATE = 1 / 3   # at least a third of QEMU's exit rate


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build_guest(workdir: Path, loops: int) -> Path:
    obj, elf = workdir / "guest.o", workdir / "guest.elf"
    common.check_run(["gcc", "-c", f"-DLOOPS={loops}", str(BENCH / "guests" / "exit_loop.S"), "-o", str(obj)])
    common.check_run(["ld", "-m", "elf_x86_64", "-T", str(BENCH / "guests" / "pvh.ld"), str(obj), "-o", str(elf)])
    return elf


def one_run(argv: list[str], expect_code: int, timeout: float = 120.0) -> dict[str, float]:
    """Start argv, time 'A' and 'B' on its stdout, reap it with rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen: dict[str, float] = {}
    buf = b""
    deadline = t0 + timeout
    while "B" not in seen:
        left = deadline - time.perf_counter()
        if left <= 0:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"{argv[0]}: no 'B' within {timeout} s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        now = time.perf_counter()
        if not chunk:
            break
        buf += chunk
        for mark in ("A", "B"):
            if mark.encode() in buf and mark not in seen:
                seen[mark] = now
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    if "A" not in seen or "B" not in seen:
        raise RuntimeError(f"{argv[0]}: serial output {buf!r}, stderr {err.strip()[-500:]!r}")
    if proc.returncode != expect_code:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}, expected {expect_code}: {err.strip()[-500:]}")
    return {"first_byte_ms": (seen["A"] - t0) * 1000, "loop_s": seen["B"] - seen["A"],
            "maxrss_kib": float(usage.ru_maxrss)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--loops", type=int, default=20000)
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    args = ap.parse_args()
    vmm = REPO / ".venv" / "bin" / "virtkit-vmm"
    qemu = shutil.which("qemu-system-x86_64")
    if not os.path.exists("/dev/kvm"):
        log("bench/vmm.py: /dev/kvm is absent; both VMMs need it")
        return 1
    with tempfile.TemporaryDirectory(prefix="vk-bench-vmm-") as tmp:
        guest = build_guest(Path(tmp), args.loops)
        contestants: dict[str, list[str]] = {
            "virtkit-vmm": [str(vmm), "--kernel", str(guest), "--memory", "64M", "--serial", "stdio"],
        }
        if qemu:
            contestants["qemu-microvm-kvm"] = [qemu, "-M", "microvm,accel=kvm", "-m", "64", "-nodefaults",
                                               "-no-user-config", "-display", "none", "-serial", "stdio",
                                               "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                                               "-kernel", str(guest)]
        codes = {"virtkit-vmm": 3, "qemu-microvm-kvm": (3 << 1) | 1}  # isa-debug-exit: (value << 1) | 1
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in contestants}
        errors: dict[str, str] = {}
        for round_no in range(args.runs + 1):           # round 0 is the warm-up
            for name, argv in contestants.items():
                if name in errors:
                    continue
                try:
                    result = one_run(argv, codes[name])
                except Exception as exc:  # noqa: BLE001 - recorded, the other contestant goes on
                    errors[name] = common.describe(exc)
                    log(f"  {name} FAILED: {errors[name]}")
                    continue
                if round_no:
                    samples[name].append(result)
            log(f"  round {round_no}/{args.runs}")
    out: dict[str, Any] = {"host": common.host_facts({"qemu": [qemu or "qemu-system-x86_64", "--version"]}),
                           "loops": args.loops, "runs": args.runs, "results": {}, "errors": errors}
    for name, rows in samples.items():
        if not rows:
            continue
        out["results"][name] = {
            "first_byte_ms": common.summary([r["first_byte_ms"] for r in rows]),
            "exits_per_s": common.summary([args.loops / r["loop_s"] for r in rows], digits=0),
            "maxrss_mib": common.summary([r["maxrss_kib"] / 1024 for r in rows]),
        }
    res = out["results"]
    if "virtkit-vmm" in res and "qemu-microvm-kvm" in res:
        v, q = res["virtkit-vmm"], res["qemu-microvm-kvm"]
        out["ratios"] = {
            "first_byte_virtkit_over_qemu": common.ratio(v["first_byte_ms"]["median"], q["first_byte_ms"]["median"]),
            "exit_rate_virtkit_over_qemu": common.ratio(v["exits_per_s"]["median"], q["exits_per_s"]["median"]),
            "maxrss_virtkit_over_qemu": common.ratio(v["maxrss_mib"]["median"], q["maxrss_mib"]["median"]),
        }
        r = out["ratios"]
        out["goals"] = {
            "first_byte_sooner_than_qemu": r["first_byte_virtkit_over_qemu"] is not None
            and r["first_byte_virtkit_over_qemu"] < GOAL_FIRST_BYTE,
            "exit_rate_at_least_a_third": r["exit_rate_virtkit_over_qemu"] is not None
            and r["exit_rate_virtkit_over_qemu"] >= GOAL_EXIT_RATE,
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vmm.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# bench/vmm.py", "", f"{out['host']['date']}, {out['host']['cpu_model']}, loops={args.loops}, "
             f"runs={args.runs} (medians; min-max in vmm.json)", "",
             "| VMM | first byte (ms) | exits/s | peak RSS (MiB) |", "|---|---|---|---|"]
    for name, row in res.items():
        lines.append(f"| {name} | {row['first_byte_ms']['median']} | {row['exits_per_s']['median']} | "
                     f"{row['maxrss_mib']['median']} |")
    if "ratios" in out:
        lines += ["", f"ratios (virtkit/qemu): {json.dumps(out['ratios'])}", f"goals: {json.dumps(out['goals'])}"]
    (args.out / "vmm.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
