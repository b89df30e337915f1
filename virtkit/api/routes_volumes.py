"""Volume routes of virtkitd: create, list, inspect, remove."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/volumes")
def list_volumes(request: Request) -> list[dict[str, Any]]:
    return request.app.state.ctx.volumes.list()  # type: ignore[no-any-return]


@router.post("/v1/volumes", status_code=201)
def create_volume(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    svc = request.app.state.ctx.volumes
    return svc.inspect(svc.create(body).name)  # type: ignore[no-any-return]


@router.get("/v1/volumes/{name}")
def get_volume(request: Request, name: str) -> dict[str, Any]:
    return request.app.state.ctx.volumes.inspect(name)  # type: ignore[no-any-return]


@router.delete("/v1/volumes/{name}")
def remove_volume(request: Request, name: str) -> dict[str, Any]:
    request.app.state.ctx.volumes.remove(name)
    return {"removed": name}
