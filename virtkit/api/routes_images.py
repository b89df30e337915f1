"""Image routes of virtkitd: list, inspect, build (streamed progress), import, export, prune, remove."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from virtkit.core.errors import InUse, InvalidArgument, VirtkitError

router = APIRouter()

BUILD_KINDS = ("busybox", "debian")


def image_dict(info: Any, manifest: dict | None = None) -> dict[str, Any]:
    cfg = info.config or {}
    out = {"name": info.name, "digest": info.digest, "layers": list(info.layers), "size": info.size,
           "created": info.created, "architecture": cfg.get("architecture"), "os": cfg.get("os"),
           "config": cfg.get("config", {})}
    if manifest is not None:
        out["layer_blobs"] = [{"digest": lay.get("digest"), "diff_id": diff_id, "size": lay.get("size"),
                               "media_type": lay.get("mediaType")}
                              for lay, diff_id in zip(manifest.get("layers", []), info.layers, strict=False)]
        out["config_digest"] = (manifest.get("config") or {}).get("digest")
        out["history"] = cfg.get("history", [])
    return out


def _str_field(body: dict[str, Any], key: str, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        if required:
            raise InvalidArgument(f"{key}: is required")
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{key}: must be a string")
    return value


def _in_use(ctx: Any) -> set[str]:
    return {i.image for i in ctx.store.list_instances()}


@router.get("/v1/images")
def list_images(request: Request) -> list[dict[str, Any]]:
    return [image_dict(i) for i in request.app.state.ctx.images.list()]


@router.post("/v1/images/build", response_model=None)
def build_image(request: Request, body: dict[str, Any]) -> StreamingResponse:
    """Streams progress as JSON lines ({"progress": ...}), ending in {"result": image} or {"error": ...}."""
    ctx = request.app.state.ctx
    kind, name = str(body.get("kind", "")), _str_field(body, "name")
    job: Callable[[Callable[[str], None]], Any]
    if kind == "busybox":
        from virtkit.images.busybox import build_busybox

        def job(say: Callable[[str], None]) -> Any:
            return build_busybox(ctx.images, name or "busybox", progress=say)
    elif kind == "debian":
        from virtkit.images.debian import build_debian, check_inputs

        vm = body.get("vm") or False
        if not isinstance(vm, bool):
            raise InvalidArgument("vm: must be true or false")
        release = _str_field(body, "release") or "bookworm"
        packages = body.get("packages") or []
        if not isinstance(packages, list) or not all(isinstance(p, str) for p in packages):
            raise InvalidArgument("packages: must be a list of package names")
        layers = body.get("layers") or 1
        if not isinstance(layers, int):
            raise InvalidArgument("layers: must be an integer")
        check_inputs(release, packages, "amd64", layers)   # bad input fails here, before the stream starts
        if name is not None:
            from virtkit.images.store import normalize_name

            normalize_name(name)

        def job(say: Callable[[str], None]) -> Any:
            return build_debian(ctx.images, name, release=release, packages=packages, layers=layers, vm=vm,
                                no_cache=bool(body.get("no_cache")), progress=say)
    else:
        raise InvalidArgument(f"kind: unknown image kind {kind!r} (known: {', '.join(BUILD_KINDS)})")
    return StreamingResponse(_run_streamed(job), media_type="application/x-ndjson")


def _run_streamed(job: Callable[[Callable[[str], None]], Any]) -> Iterator[bytes]:
    from virtkit.images.progress import fraction_of

    lines: queue.Queue[bytes | None] = queue.Queue()

    def say(msg: str) -> None:
        event: dict[str, Any] = {"progress": msg}
        if (fraction := fraction_of(msg)) is not None:
            event["fraction"] = fraction
        lines.put(json.dumps(event).encode() + b"\n")

    def work() -> None:
        try:
            info = job(say)
            lines.put(json.dumps({"result": image_dict(info)}).encode() + b"\n")
        except VirtkitError as exc:
            lines.put(json.dumps(exc.to_dict()).encode() + b"\n")
        except Exception as exc:  # a bug: the daemon log gets the traceback, the client the gist
            import traceback

            traceback.print_exception(exc)
            lines.put(json.dumps({"error": "internal", "message": f"internal error: {exc!r}"}).encode() + b"\n")
        finally:
            lines.put(None)

    threading.Thread(target=work, name="image-build", daemon=True).start()
    while (line := lines.get()) is not None:
        yield line


@router.post("/v1/images/import")
def import_image(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    from virtkit.images.importer import import_image as do_import

    ctx = request.app.state.ctx
    path = _str_field(body, "path", required=True)
    assert path is not None
    if not path.startswith("/"):
        raise InvalidArgument(f"path: {path!r} must be absolute (the daemon resolves it)")
    info = do_import(ctx.images, path, _str_field(body, "name"))
    return image_dict(info, ctx.images.manifest(info.name))


@router.post("/v1/images/export")
def export_image(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    from virtkit.images.exporter import export_image as do_export

    name = _str_field(body, "name", required=True)
    path = _str_field(body, "path", required=True)
    assert name is not None and path is not None
    if not path.startswith("/"):
        raise InvalidArgument(f"path: {path!r} must be absolute (the daemon resolves it)")
    return do_export(request.app.state.ctx.images, name, path, _str_field(body, "format") or "oci")


@router.post("/v1/images/prune")
def prune_images(request: Request) -> dict[str, Any]:
    ctx = request.app.state.ctx
    return dict(ctx.images.prune(in_use=_in_use(ctx)))


@router.get("/v1/images/{name:path}")
def get_image(request: Request, name: str) -> dict[str, Any]:
    images = request.app.state.ctx.images
    info = images.get(name)
    return image_dict(info, images.manifest(info.name))


@router.delete("/v1/images/{name:path}")
def remove_image(request: Request, name: str) -> dict[str, Any]:
    ctx = request.app.state.ctx
    info = ctx.images.get(name)
    users = [i.name for i in ctx.store.list_instances() if i.image == info.name]
    if users:
        raise InUse(f"image '{info.name}' is used by instance(s) {', '.join(users)}; remove them first")
    ctx.images.remove(name)
    return {"removed": name}
