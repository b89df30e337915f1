"""Why a request goes where it goes: every host's filter verdict or score breakdown, and the decision."""

from __future__ import annotations

from typing import Any

from virtkit.sched.engine import Scheduler
from virtkit.sched.model import Request


def explain(s: Scheduler, req: Request) -> dict[str, Any]:
    """A dry run of the decision plus, for every host, which filter rejected it (and why) or its scores.

    `considered` marks the feasible hosts the engine's index actually scored (at most max_candidates);
    the decision is taken among those.
    """
    d = s.vector(req)
    decision = s.schedule(req, bind=False)
    quota = s.quota_reason(req, d)
    considered = {h.index for h in s.candidates(req, d)} if not quota else set()
    rows: list[dict[str, Any]] = []
    feasible = []
    for h in s.hosts:
        why = s.why_not(h, req, d)
        if why is not None:
            rows.append({"host": h.name, "status": "filtered", "filter": why[0], "reason": why[1]})
        else:
            feasible.append(h)
    s.prepare_policy()
    if feasible:
        parts = s.policy.rank_breakdown(feasible, d, req)
        for h, b in zip(feasible, parts, strict=True):
            bonus = s.group_bonus(h, req)
            if bonus:
                b = {**b, "soft_groups": bonus}
            rows.append({"host": h.name, "status": "scored" if h.index in considered else "feasible",
                         "score": round(sum(b.values()), 6),
                         "breakdown": {k: round(v, 6) for k, v in b.items()}})
    order = {h.name: i for i, h in enumerate(s.hosts)}
    rows.sort(key=lambda r: order[r["host"]])
    return {
        "request": req.id,
        "policy": s.policy.name,
        "policy_state": s.policy.describe(),
        "demand": {r: d[i] for i, r in enumerate(s.resources) if d[i]},
        "decision": decision.host,
        "reason": decision.reason,
        "victims": decision.victims,
        "quota": quota,
        "hosts": rows,
    }


def render(e: dict[str, Any]) -> str:
    demand = ", ".join(f"{k}={v:g}" for k, v in e["demand"].items())
    lines = [f"request {e['request']} ({demand}) policy {e['policy']}"]
    if e["policy_state"]:
        lines.append(f"policy state: {e['policy_state']}")
    if e["decision"]:
        pre = f" (preempting {', '.join(e['victims'])})" if e["victims"] else ""
        lines.append(f"decision: {e['decision']}{pre}")
        if e["victims"]:
            lines.append(e["reason"])
    else:
        lines.append(f"decision: rejected ({e['reason']})")
    for r in e["hosts"]:
        if r["status"] == "filtered":
            lines.append(f"  {r['host']}: filtered by {r['filter']}: {r['reason']}")
        else:
            parts = " ".join(f"{k}={v:.3f}" for k, v in r["breakdown"].items())
            mark = "*" if r["host"] == e["decision"] else " "
            note = "" if r["status"] == "scored" else (" (not considered: over quota)" if e["quota"]
                                                       else " (feasible, outside the index window)")
            lines.append(f"{mark} {r['host']}: score {r['score']:.3f} [{parts}]{note}")
    return "\n".join(lines)
