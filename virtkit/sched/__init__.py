"""virtkit.sched: placement policy — filter, score, bind, batch, preemption, quotas, rebalancing plans.

Pure functions and plain data, no syscalls. Entry points: `Scheduler` (engine), `plan_consolidation`,
`plan_drain` (planner), `virtkit-sched` (replay command, `virtkit.sched.cli`), and the same place / explain
over JSON (`virtkit.sched.jsonio`, served by virtkitd under /v1/sched).
"""

from __future__ import annotations

from virtkit.sched.engine import Decision, Scheduler
from virtkit.sched.model import Group, Host, Request, SchedError
from virtkit.sched.planner import Move, plan_consolidation, plan_drain
from virtkit.sched.policies import POLICIES

__all__ = [
    "POLICIES", "Decision", "Group", "Host", "Move", "Request", "SchedError", "Scheduler",
    "plan_consolidation", "plan_drain",
]
