"""Network routes of virtkitd: create, list, inspect, remove."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/v1/networks")
def list_networks(request: Request) -> list[dict[str, Any]]:
    return request.app.state.ctx.networks.list()  # type: ignore[no-any-return]


@router.post("/v1/networks", status_code=201)
def create_network(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    svc = request.app.state.ctx.networks
    return svc.inspect(svc.create(body).name)  # type: ignore[no-any-return]


@router.get("/v1/networks/{name}")
def get_network(request: Request, name: str) -> dict[str, Any]:
    return request.app.state.ctx.networks.inspect(name)  # type: ignore[no-any-return]


@router.delete("/v1/networks/{name}")
def remove_network(request: Request, name: str) -> dict[str, Any]:
    request.app.state.ctx.networks.remove(name)
    return {"removed": name}


@router.post("/v1/networks/{name}/connect")
def connect_instance(request: Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.ctx.networks.connect(  # type: ignore[no-any-return]
        name, str(body.get("instance") or ""), body.get("ip"), body.get("ip6"))


@router.post("/v1/networks/{name}/disconnect")
def disconnect_instance(request: Request, name: str, body: dict[str, Any]) -> dict[str, Any]:
    request.app.state.ctx.networks.disconnect(name, str(body.get("instance") or ""))
    return {"disconnected": body.get("instance"), "network": name}
