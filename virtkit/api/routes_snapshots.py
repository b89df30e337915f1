"""Snapshot routes of virtkitd (under an instance) and publish (an instance's changes as an image)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from virtkit.api.routes_images import image_dict
from virtkit.core.errors import InvalidArgument

router = APIRouter()


@router.get("/v1/instances/{instance}/snapshots")
def list_snapshots(request: Request, instance: str) -> list[dict[str, Any]]:
    return request.app.state.ctx.snapshots.list(instance)  # type: ignore[no-any-return]


@router.post("/v1/instances/{instance}/snapshots", status_code=201)
def create_snapshot(request: Request, instance: str, body: dict[str, Any]) -> dict[str, Any]:
    return request.app.state.ctx.snapshots.create(instance, body.get("name"))  # type: ignore[no-any-return]


@router.get("/v1/instances/{instance}/snapshots/{name}")
def get_snapshot(request: Request, instance: str, name: str) -> dict[str, Any]:
    return request.app.state.ctx.snapshots.get(instance, name)  # type: ignore[no-any-return]


@router.post("/v1/instances/{instance}/snapshots/{name}/restore")
def restore_snapshot(request: Request, instance: str, name: str) -> dict[str, Any]:
    return request.app.state.ctx.snapshots.restore(instance, name)  # type: ignore[no-any-return]


@router.delete("/v1/instances/{instance}/snapshots/{name}")
def remove_snapshot(request: Request, instance: str, name: str) -> dict[str, Any]:
    request.app.state.ctx.snapshots.remove(instance, name)
    return {"removed": name}


@router.post("/v1/instances/{instance}/publish", status_code=201)
def publish(request: Request, instance: str, body: dict[str, Any]) -> dict[str, Any]:
    image = body.get("image")
    if not isinstance(image, str) or not image:
        raise InvalidArgument("image: the name of the image to publish is required")
    return image_dict(request.app.state.ctx.snapshots.publish(instance, image))
