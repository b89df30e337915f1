"""Scheduler routes of virtkitd: place a trace on a pool of hosts, explain one decision, list the policies.

The bodies are plain JSON (see virtkit/sched/jsonio.py); the work is pure computation, run off the event loop.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from virtkit.core.errors import InvalidArgument
from virtkit.sched import jsonio
from virtkit.sched.policies import POLICIES

router = APIRouter()


async def _body(request: Request) -> Any:
    raw = await request.body()
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"body: not valid JSON ({exc})") from None


@router.get("/v1/sched/policies")
def list_policies() -> list[dict[str, Any]]:
    return [{"name": name, "default": name == "virtkit", "description": (cls.__doc__ or "").strip().split("\n")[0]}
            for name, cls in POLICIES.items()]


@router.post("/v1/sched/place")
async def place(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(jsonio.place, await _body(request))


@router.post("/v1/sched/explain")
async def explain(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(jsonio.explain, await _body(request))
