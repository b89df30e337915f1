"""The scheduler benchmark's report: goals checked from the results, the Markdown page and the PNG plots.

Used by bench/scheduler.py, which measures; this module only reads the results dictionary it builds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

VIRTKIT = "virtkit"


def _best_baseline(rows: list[dict[str, Any]], key: str) -> tuple[str, float]:
    base = [(r[key], r["policy"]) for r in rows if r["policy"] != VIRTKIT]
    v, p = min(base)
    return p, v


def _per_seed_wins(runs: list[dict[str, Any]], key: str, seed_key: str = "seed") -> str:
    """On how many seeds virtkit is at or below every baseline (ties count as wins)."""
    seeds = sorted({r[seed_key] for r in runs})
    wins = 0
    for sd in seeds:
        here = [r for r in runs if r[seed_key] == sd]
        mine = next(r[key] for r in here if r["policy"] == VIRTKIT)
        wins += mine <= min(r[key] for r in here if r["policy"] != VIRTKIT)
    return f"{wins}/{len(seeds)}"


def _static_rows(st: list[dict[str, Any]], runs: list[dict[str, Any]], kinds: list[str],
                 label: str) -> list[dict[str, Any]]:
    out = []
    for kind in kinds:
        for batch in (False, True):
            rows = [r for r in st if r["kind"] == kind and r["batch"] == batch]
            p, v = _best_baseline(rows, "host_equiv")
            mine = next(r for r in rows if r["policy"] == VIRTKIT)["host_equiv"]
            seeds = [r for r in runs if r["kind"] == kind and r["batch"] == batch]
            out.append({"kind": kind, "mode": ("batch" if batch else "online") + label, "virtkit": mine,
                        "best_baseline": p, "baseline": v, "met": mine <= v,
                        "per_seed": _per_seed_wins(seeds, "host_equiv")})
    return out


def goals(res: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    st = res["static"]
    kinds = list(res["static_lb"])
    vk = next(r for r in st if r["kind"] == "azure" and r["batch"] and r["policy"] == VIRTKIT)
    runs = [r for r in res["static_runs"] if r["kind"] == "azure" and r["batch"] and r["policy"] == VIRTKIT]
    # a whole number of hosts: ceil(lower bound) is the best any packing can reach on a trace
    at_ceil = [r["host_equiv"] <= math.ceil(r["lb"] - 1e-9) for r in runs]
    g["static_azure_within_1pct_of_lb"] = {"virtkit_batch": vk["host_equiv"], "lower_bound": res["static_lb"]["azure"],
                                           "ratio": vk["ratio"], "worst_seed_ratio": vk["max_ratio"],
                                           "seeds_at_ceil_lb": f"{sum(at_ceil)}/{len(runs)}",
                                           "met": vk["ratio"] <= 1.01 and (vk["max_ratio"] <= 1.01 or all(at_ceil))}
    on = next(r for r in st if r["kind"] == "azure" and not r["batch"] and r["policy"] == VIRTKIT)
    g["static_azure_online_within_1pct_of_lb"] = {"virtkit_online": on["host_equiv"], "ratio": on["ratio"],
                                                  "met": on["ratio"] <= 1.01}
    never_worse = _static_rows(st, res["static_runs"], kinds, "")
    for pool_name in ("lb+10%", "lb"):
        for kind in res["dynamic_lb"]:
            rows = [r for r in res["dynamic"] if r["kind"] == kind and r["pool"] == pool_name]
            p, v = _best_baseline(rows, "rejected")
            mine = next(r for r in rows if r["policy"] == VIRTKIT)["rejected"]
            seeds = [r for r in res["dynamic_runs"] if r["kind"] == kind and r["pool"] == pool_name]
            never_worse.append({"kind": kind, "mode": f"dynamic {pool_name} rejections", "virtkit": mine,
                                "best_baseline": p, "baseline": v, "met": mine <= v, "strictly_fewer": mine < v,
                                "per_seed": _per_seed_wins(seeds, "rejected")})
    for kind in res["dynamic_lb"]:
        rows = [r for r in res["smallest_pool"] if r["kind"] == kind]
        p, v = _best_baseline(rows, "smallest_pool_equiv")
        mine = next(r for r in rows if r["policy"] == VIRTKIT)["smallest_pool_equiv"]
        never_worse.append({"kind": kind, "mode": "smallest pool without rejection", "virtkit": mine,
                            "best_baseline": p, "baseline": v, "met": mine <= v, "strictly_fewer": mine < v,
                            "per_seed": ""})
    if res.get("static_extra"):
        never_worse += _static_rows(res["static_extra"], res["static_extra_runs"], kinds, ", extra seeds")
    if res.get("dynamic_extra"):
        for kind in res["dynamic_lb"]:
            rows = [r for r in res["dynamic_extra"] if r["kind"] == kind]
            p, v = _best_baseline(rows, "rejected")
            mine = next(r for r in rows if r["policy"] == VIRTKIT)["rejected"]
            seeds = [r for r in res["dynamic_extra_runs"] if r["kind"] == kind]
            never_worse.append({"kind": kind, "mode": "dynamic lb rejections, extra seeds", "virtkit": mine,
                                "best_baseline": p, "baseline": v, "met": mine <= v, "strictly_fewer": mine < v,
                                "per_seed": _per_seed_wins(seeds, "rejected")})
    g["never_worse_than_best_baseline"] = never_worse
    # the "fewer rejections than every baseline in the dynamic replay": strictly fewer, per workload and
    # pool; where every policy rejects nothing there is nothing to beat, and the smallest pool that runs the
    # trace without rejection is the figure that tells the policies apart
    fewer = []
    for r in never_worse:
        if "rejections" in r["mode"] or "smallest pool" in r["mode"]:
            tie0 = r["virtkit"] == 0 and r["baseline"] == 0
            fewer.append({**r, "strictly_fewer": r["virtkit"] < r["baseline"], "all_zero": tie0})
    g["fewer_rejections_than_every_baseline"] = fewer
    top = max(x["hosts"] for x in res["latency"])
    lat = max((r for r in res["latency"] if r["policy"].startswith(VIRTKIT) and r["hosts"] == top
               and r["gc_frozen"]), key=lambda r: r["p99_ms"])
    g["p99_under_1ms_at_max_hosts"] = {"p99_ms": lat["p99_ms"], "hosts": top, "policy": lat["policy"],
                                       "met": lat["p99_ms"] < 1.0}
    return g


def _long_line(res: dict[str, Any]) -> list[str]:
    long = res.get("static_long") or []
    if not long:
        return []
    return [f"Online on one {long[0]['n']}-request Azure-like trace (seed {long[0]['seed']}, bound {long[0]['lb']}), "
            "hosts (ratio): " + ", ".join(f"{r['policy']} {r['host_equiv']:g} ({r['ratio']:.3f})" for r in long)
            + ".", ""]


def _online_note(res: dict[str, Any]) -> str:
    """Why online placement stays above 1% of the bound, from the runs' own figures."""
    txt = ("Why online stays above 1%: online placement sees one request at a time and may open a host only when "
           "no open host takes the request (online two-resource bin packing). ")
    long = {r["policy"]: r for r in res.get("static_long", [])}
    if VIRTKIT in long:
        v = long[VIRTKIT]
        best = min((r for p, r in long.items() if p != VIRTKIT), key=lambda r: r["ratio"])
        txt += (f"The gap is not an end-of-trace effect: on a {v['n']}-request Azure-like trace (seed {v['seed']}) "
                f"virtkit online uses {v['ratio']} of the bound (best baseline {best['ratio']}, {best['policy']}), "
                "no closer than on the 1000-request traces. What is lost is imbalance: of its "
                f"{v['hosts']} hosts, {v['hosts_cpu_left_no_mem']} end with vCPU left but under 1 GiB of memory and "
                f"{v['hosts_mem_left_no_cpu']} with memory left but no whole vCPU (the smallest request asks "
                "1 vCPU and 0.75 GiB); "
                "a request placed before the ones that would have evened a host out never moves. ")
    return txt + ("Batch placement, which sees every request before it places any, is the mode that reaches the "
                  "bound; online, the goal is not met by virtkit or by any baseline.")


def _static_table(res: dict[str, Any], st: list[dict[str, Any]], policies: list[str]) -> list[str]:
    L = ["| policy | " + " | ".join(f"{k} online | {k} batch" for k in res["static_lb"]) + " |",
         "|---|" + "---|---|" * len(res["static_lb"])]
    for p in policies:
        cells = []
        for k in res["static_lb"]:
            for b in (False, True):
                r = next(x for x in st if x["kind"] == k and x["policy"] == p and x["batch"] == b)
                cells.append(f"{r['host_equiv']:g} ({r['ratio']:.3f})")
        L.append(f"| {p} | " + " | ".join(cells) + " |")
    return L


def write_md(res: dict[str, Any], path: Path) -> None:
    policies = res["params"]["policies"]
    prm = res["params"]
    L = ["# Scheduler benchmark", "", f"Generated by `bench/scheduler.py` ({res['host']['when']}, "
         f"{res['host']['python']}, {res['host']['cpus']} CPUs, total {res['host']['seconds']} s). "
         "Every policy in one run on the same seeded traces; lower is better everywhere.", "",
         f"Seeds. Report: static {prm['seeds']}, dynamic {prm['dynamic_seeds']}. Extra (validation, never used "
         f"to choose weights): static {prm.get('extra_seeds', [])}, dynamic {prm.get('extra_dynamic_seeds', [])}. "
         "The `virtkit` weights were chosen on other traces: static seeds 1-12, dynamic seeds 201-224.", ""]
    L += ["## Static: hosts used (64 vCPU / 256 GiB host-equivalents) on an elastic pool", "",
          f"Requests: {prm['static_n']} per workload. Volume lower bound: " +
          ", ".join(f"{k} {v:.2f}" for k, v in res["static_lb"].items()) + ".", ""]
    L += _static_table(res, res["static"], policies)
    L += ["", f"Mean over {len(prm['seeds'])} seeded traces (mean ratio to each trace's volume lower bound "
          "in parentheses; per-seed figures in the JSON). Online: file order, a host is opened only when no open "
          "host takes the request. Batch: `place_batch` of the whole trace.", "",
          *_long_line(res), "### Exact optimum on small instances", "",
          "| workload | requests | lower bound | best heuristic | virtkit batch | optimum (HiGHS) | proven "
          "| solver s |",
          "|---|---|---|---|---|---|---|---|"]
    for e in res["exact"]:
        L.append(f"| {e['kind']} | {e['n']} | {e['lower_bound']} | {e['best_heuristic']} ({e['best_policy']}) | "
                 f"{e['virtkit_batch']} | {e['optimum']} | {e['proven']} | {e['seconds']} |")
    if not res["exact"]:
        L.append("| (skipped: highspy is not installed) | | | | | | | |")
    L += ["", "## Dynamic: 14 days of arrivals and departures, online", ""]
    for kind, lb in res["dynamic_lb"].items():
        L.append(f"- {kind}: {res['dynamic_requests'][kind]} requests over {len(prm['dynamic_seeds'])} "
                 f"traces, mean peak-volume lower bound {lb:.2f} hosts")
    L += ["", "Rejections summed over the traces; stranding and empty hosts averaged.", "",
          "| workload | pool | policy | rejected | stranded vCPU % | stranded GiB % | empty hosts (mean) |",
          "|---|---|---|---|---|---|---|"]
    for r in res["dynamic"]:
        L.append(f"| {r['kind']} | {r['pool']} ({r['hosts']} hosts) | {r['policy']} | {r['rejected']} | "
                 f"{r.get('stranded_vcpu_pct', '')} | {r.get('stranded_mem_pct', '')} | "
                 f"{r.get('empty_hosts_mean', '')} |")
    L += ["", "Stranded: free vCPU on hosts with under 2 GiB free, free memory on hosts with no whole vCPU free, "
          "as % of the pool, averaged over hourly samples.", "", "### Smallest pool with no rejection "
          "(standard-host-equivalents of both resources, summed over the traces)", "",
          "| policy | " + " | ".join(res["dynamic_lb"]) + " |",
          "|---|" + "---|" * len(res["dynamic_lb"])]
    for p in policies:
        sp = {r["kind"]: r for r in res["smallest_pool"] if r["policy"] == p}
        L.append(f"| {p} | " + " | ".join(f"{sp[k]['smallest_pool_equiv']} ({'+'.join(map(str, sp[k]['per_trace']))})"
                                          for k in res["dynamic_lb"]) + " |")
    if res.get("static_extra") or res.get("dynamic_extra"):
        L += ["", "## Extra seeds (validation)", ""]
    if res.get("static_extra"):
        L += [f"Static, mean over {len(prm['extra_seeds'])} more traces per workload (seeds "
              f"{prm['extra_seeds'][0]}-{prm['extra_seeds'][-1]}):", ""]
        L += _static_table(res, res["static_extra"], policies)
    if res.get("dynamic_extra"):
        L += ["", f"Dynamic, pool = lower bound, rejections summed over {len(prm['extra_dynamic_seeds'])} more "
              f"traces per workload (seeds {prm['extra_dynamic_seeds'][0]}-{prm['extra_dynamic_seeds'][-1]}):", "",
              "| policy | " + " | ".join(res["dynamic_lb"]) + " |", "|---|" + "---|" * len(res["dynamic_lb"])]
        for p in policies:
            rows = {r["kind"]: r for r in res["dynamic_extra"] if r["policy"] == p}
            L.append(f"| {p} | " + " | ".join(str(rows[k]["rejected"]) for k in res["dynamic_lb"]) + " |")
    L += ["", "## Latency per decision (ms), pool filled to ~75% vCPU with the Azure mix", "",
          "| policy | " + " | ".join(f"{n} hosts p50 | {n} hosts p99" for n in prm["latency_hosts"]) + " |",
          "|---|" + "---|---|" * len(prm["latency_hosts"])]
    labels = list(dict.fromkeys(r["policy"] for r in res["latency"] if r["gc_frozen"]))
    for p in labels:
        cells = []
        for n in prm["latency_hosts"]:
            r = next(x for x in res["latency"] if x["hosts"] == n and x["policy"] == p and x["gc_frozen"])
            cells += [f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}"]
        L.append(f"| {p} | " + " | ".join(cells) + " |")
    cells = []
    for n in prm["latency_hosts"]:
        r = next(x for x in res["latency"] if x["hosts"] == n and x["policy"] == VIRTKIT and not x["gc_frozen"])
        cells += [f"{r['p50_ms']:.3f}", f"{r['p99_ms']:.3f}"]
    L.append("| virtkit, GC not frozen | " + " | ".join(cells) + " |")
    L += ["", "The pool is loaded directly (not through decisions), so `virtkit` has seen no churn and aligns; "
          "`virtkit (consolidating)` is the same policy fixed at the blend it reaches in a replay with departures. "
          "The state (~10^5 resident requests at 10,000 hosts) is moved to the GC's permanent generation "
          "(`gc.freeze()`) after loading, as a long-lived scheduler service should; the last row is without it."]
    g = res["goals"]
    g1, g2 = g["static_azure_within_1pct_of_lb"], g["p99_under_1ms_at_max_hosts"]
    g1o = g["static_azure_online_within_1pct_of_lb"]
    fewer = g["fewer_rejections_than_every_baseline"]
    beaten = [f"{r['kind']} {r['mode']}" for r in fewer if r["strictly_fewer"]]
    zero = [f"{r['kind']} {r['mode']}" for r in fewer if r["all_zero"]]
    lost = [f"{r['kind']} {r['mode']} ({r['virtkit']} vs {r['baseline']} {r['best_baseline']})"
            for r in fewer if not r["strictly_fewer"] and not r["all_zero"]]
    worse = [f"{r['kind']} {r['mode']}" for r in g["never_worse_than_best_baseline"] if not r["met"]]
    L += ["", "## Goals", "",
          "| goal | figure | met |", "|---|---|---|",
          f"| virtkit within 1% of the lower bound, Azure-like static mix, batch | mean {g1['ratio']}, worst trace "
          f"{g1['worst_seed_ratio']}, traces at ceil(lower bound) {g1['seeds_at_ceil_lb']} | "
          f"{'yes' if g1['met'] else 'NO'} |",
          f"| the same, online (file order, first fit into an elastic pool) | mean {g1o['ratio']} | "
          f"{'yes' if g1o['met'] else 'NO'} |",
          f"| fewer rejections than every baseline in the dynamic replay | strictly fewer on {len(beaten)} of "
          f"{len(fewer)} measures; all policies at 0 on {len(zero)}; not fewer on {len(lost)}"
          f"{': ' + '; '.join(lost) if lost else ''} | {'yes' if not lost else 'NO'} |",
          f"| never worse than the best baseline on any workload (sums / means) | worse on {len(worse)} of "
          f"{len(g['never_worse_than_best_baseline'])} measures{': ' + '; '.join(worse) if worse else ''} | "
          f"{'yes' if not worse else 'NO'} |",
          f"| p99 under 1 ms per decision at {g2['hosts']} hosts | {g2['p99_ms']} ms ({g2['policy']}, the slower "
          f"mode) | {'yes' if g2['met'] else 'NO'} |",
          "", _online_note(res),
          "", "Every measure (sums or means over the traces; per seed: on how many traces virtkit is at or below "
          "every baseline):", ""]
    L += ["| workload | measure | virtkit | best baseline | met | strictly better | per seed |",
          "|---|---|---|---|---|---|---|"]
    for r in g["never_worse_than_best_baseline"]:
        L.append(f"| {r['kind']} | {r['mode']} | {r['virtkit']} | {r['baseline']} ({r['best_baseline']}) | "
                 f"{'yes' if r['met'] else 'NO'} | {'yes' if r['virtkit'] < r['baseline'] else 'no'} | "
                 f"{r.get('per_seed', '')} |")
    path.write_text("\n".join(L) + "\n")


def plots(res: dict[str, Any], results: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = res["params"]["policies"]
    out = []
    kinds = list(res["static_lb"])
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, batch in zip(axes, (False, True), strict=True):
        width = 0.8 / len(policies)
        for i, p in enumerate(policies):
            vals = [next(r["ratio"] for r in res["static"] if r["kind"] == k and r["policy"] == p
                         and r["batch"] == batch) for k in kinds]
            ax.bar([j + i * width for j in range(len(kinds))], vals, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(kinds))], kinds)
        ax.set_ylim(0.95, max(1.6, ax.get_ylim()[1]))
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"static, {'batch' if batch else 'online'}: hosts / volume lower bound")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(results / "scheduler_static.png", dpi=110)
    out.append("scheduler_static.png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, pool_name in zip(axes, ("lb+10%", "lb"), strict=True):
        width = 0.8 / len(policies)
        for i, p in enumerate(policies):
            vals = [next(r["rejected"] for r in res["dynamic"] if r["kind"] == k and r["policy"] == p
                         and r["pool"] == pool_name) for k in res["dynamic_lb"]]
            ax.bar([j + i * width for j in range(len(vals))], vals, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(res["dynamic_lb"]))], list(res["dynamic_lb"]))
        ax.set_title(f"dynamic, pool = {pool_name}: rejected requests")
    axes[0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(results / "scheduler_dynamic.png", dpi=110)
    out.append("scheduler_dynamic.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    labels = list(dict.fromkeys(r["policy"] for r in res["latency"] if r["gc_frozen"]))
    for n in res["params"]["latency_hosts"]:
        rows = [next(r for r in res["latency"] if r["hosts"] == n and r["policy"] == p and r["gc_frozen"])
                for p in labels]
        ax.plot(labels, [r["p99_ms"] for r in rows], "o-", label=f"p99, {n} hosts")
        ax.plot(labels, [r["p50_ms"] for r in rows], "x--", label=f"p50, {n} hosts")
    ax.axhline(1.0, color="r", lw=0.8)
    ax.set_yscale("log")
    ax.set_ylabel("ms per decision")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend(fontsize=8)
    ax.set_title("decision latency")
    fig.tight_layout()
    fig.savefig(results / "scheduler_latency.png", dpi=110)
    out.append("scheduler_latency.png")
    plt.close(fig)
    return out
