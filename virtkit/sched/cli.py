"""`virtkit-sched`: replay a request trace against a pool of hosts (place), or explain one decision.

    virtkit-sched place --hosts HOSTS.csv --requests REQS.csv [--policy NAME] [--batch]
                        [--cpu-ratio R] [--mem-ratio R] [--quotas QUOTAS.csv] > PLACEMENTS.csv
    virtkit-sched explain --hosts HOSTS.csv --requests REQS.csv --id ID [--policy NAME] [--quotas QUOTAS.csv]
                          [--json]

Output of place: `id,host` in request order, an empty host for a rejected request, one over its project's
quota, or one evicted by a request of higher priority (REQS.csv column `priority`; the victims are the
lowest priorities first, then the fewest, then the smallest; explain names them).
Quotas (QUOTAS.csv: project,vcpus,memory_mib[,instances]) bound what each project's running instances hold;
a project without a row has no quota. Bad input: a message naming the file, line and column, exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys

from virtkit.sched.policies import POLICIES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="virtkit-sched", description="virtkit placement engine: replay and explain")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("place", "place every request, print id,host CSV"), ("explain", "explain one decision")):
        c = sub.add_parser(name, help=help_)
        c.add_argument("--hosts", required=True, metavar="HOSTS.csv")
        c.add_argument("--requests", required=True, metavar="REQS.csv")
        c.add_argument("--policy", default="virtkit", choices=list(POLICIES))
        c.add_argument("--batch", action="store_true", help="place requests arriving together as one batch")
        c.add_argument("--cpu-ratio", type=_ratio, default=1.0, help="vCPU overcommit ratio (default 1.0)")
        c.add_argument("--mem-ratio", type=_ratio, default=1.0, help="memory overcommit ratio (default 1.0)")
        c.add_argument("--seed", type=int, default=0, help="seed of the random policy")
        c.add_argument("--quotas", metavar="QUOTAS.csv",
                       help="per-project limits: project,vcpus,memory_mib[,instances] (no row: no quota)")
        if name == "explain":
            c.add_argument("--id", required=True, help="the request to explain")
            c.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _ratio(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return v


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from virtkit.sched.csvio import read_hosts, read_quotas, read_requests
    from virtkit.sched.engine import Scheduler
    from virtkit.sched.model import SchedError
    from virtkit.sched.replay import replay

    try:
        hosts = read_hosts(args.hosts)
        resources = tuple(dict.fromkeys(r for h in hosts for r in h.capacity)) or ("vcpus", "memory_mib")
        trace = read_requests(args.requests, resources)
        quotas = read_quotas(args.quotas, resources) if args.quotas else None
        s = Scheduler(hosts, args.policy, ratios={"vcpus": args.cpu_ratio, "memory_mib": args.mem_ratio},
                      groups=trace.groups, seed=args.seed, quotas=quotas)
        if args.cmd == "place":
            result = replay(s, trace.requests, timed=trace.timed, batch=args.batch)
            w = csv.writer(sys.stdout, lineterminator="\n")
            w.writerow(("id", "host"))
            for r in trace.requests:
                w.writerow((r.id, result[r.id] or ""))
            return 0
        target = next((r for r in trace.requests if r.id == args.id), None)
        if target is None:
            raise SchedError(f"{args.requests}: no request with id {args.id!r}")
        replay(s, trace.requests, timed=trace.timed, batch=args.batch, stop_before=args.id)
        from virtkit.sched.explain import explain, render

        e = explain(s, target)
        print(json.dumps(e, indent=2) if args.json else render(e))
        return 0
    except SchedError as e:
        print(f"virtkit-sched: error: {e.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
