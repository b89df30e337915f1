"""Image routes of virtkitd: list, inspect, build, remove."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from virtkit.core.errors import InUse, InvalidArgument

router = APIRouter()


def image_dict(info: Any) -> dict[str, Any]:
    cfg = info.config or {}
    return {"name": info.name, "digest": info.digest, "layers": list(info.layers), "size": info.size,
            "created": info.created, "architecture": cfg.get("architecture"), "os": cfg.get("os"),
            "config": cfg.get("config", {})}


@router.get("/v1/images")
def list_images(request: Request) -> list[dict[str, Any]]:
    return [image_dict(i) for i in request.app.state.ctx.images.list()]


@router.get("/v1/images/{name}")
def get_image(request: Request, name: str) -> dict[str, Any]:
    return image_dict(request.app.state.ctx.images.get(name))


@router.post("/v1/images/build")
def build_image(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    ctx = request.app.state.ctx
    kind, name = str(body.get("kind", "")), body.get("name")
    if kind == "busybox":
        from virtkit.images.busybox import build_busybox

        return image_dict(build_busybox(ctx.images, name or "busybox"))
    raise InvalidArgument(f"image build: unknown image kind {kind!r} (known: busybox)")


@router.delete("/v1/images/{name}")
def remove_image(request: Request, name: str) -> dict[str, Any]:
    ctx = request.app.state.ctx
    info = ctx.images.get(name)
    users = [i.name for i in ctx.store.list_instances() if i.image == info.name]
    if users:
        raise InUse(f"image '{info.name}' is used by instance(s) {', '.join(users)}; remove them first")
    ctx.images.remove(name)
    return {"removed": name}
