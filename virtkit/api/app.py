"""The virtkitd FastAPI application: routes that turn HTTP into service calls; no logic of its own."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, StreamingResponse

from virtkit import __version__
from virtkit.api.context import FRAME_STDERR, FRAME_STDOUT, Context
from virtkit.core.errors import InvalidArgument, VirtkitError


def create_app(ctx: Context) -> FastAPI:
    app = FastAPI(title="virtkit", version=__version__)
    app.state.ctx = ctx
    svc = ctx.instances

    @app.exception_handler(VirtkitError)
    async def _virtkit_error(_req: Request, exc: VirtkitError) -> JSONResponse:
        return JSONResponse(status_code=exc.http_status, content=exc.to_dict())

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, exc: Exception) -> JSONResponse:
        # a bug, not a user error: keep the traceback in the daemon's log, give the client the gist
        import traceback

        traceback.print_exception(exc)
        return JSONResponse(status_code=500, content={"error": "internal",
                                                      "message": f"internal error: {type(exc).__name__}: {exc}"})

    @app.get("/v1/info")
    def info() -> dict[str, Any]:
        return {"version": __version__, "home": ctx.home.root, "pid": os.getpid(),
                "schema_version": ctx.store.schema_version()}

    from virtkit.api.routes_images import router as images_router

    app.include_router(images_router)
    # before the instance routes: POST /v1/instances/{name}/{action} would take .../snapshots and .../publish
    from virtkit.api.routes_networks import router as networks_router
    from virtkit.api.routes_snapshots import router as snapshots_router
    from virtkit.api.routes_volumes import router as volumes_router

    app.include_router(volumes_router)
    app.include_router(snapshots_router)
    app.include_router(networks_router)
    from virtkit.api.routes_sched import router as sched_router

    app.include_router(sched_router)

    # -- instances ------------------------------------------------------------------------------------
    @app.get("/v1/instances")
    def list_instances() -> list[dict[str, Any]]:
        return [i.to_dict() for i in svc.list_all()]

    @app.post("/v1/instances", status_code=201, response_model=None)
    def create_instance(body: dict[str, Any]) -> dict[str, Any] | StreamingResponse:
        if not body.get("attach"):
            return svc.create(body, start=bool(body.get("start"))).to_dict()
        # create, start and stream in one request: held from before start, so a quick exit is never missed
        inst = svc.create(body, start=False)
        svc.hold(inst.id)
        try:
            svc.start(inst.name)
        except BaseException:
            svc.release(inst.id)
            if inst.spec.get("auto_remove"):
                svc.remove(inst.id, force=True)
            raise
        return StreamingResponse(ctx.follow_log(inst.id, True, held=True), media_type="application/vnd.virtkit.frames")

    @app.get("/v1/instances/{name}")
    def get_instance(name: str) -> dict[str, Any]:
        return svc.get(name).to_dict()

    @app.post("/v1/instances/{name}/{action}")
    def act(name: str, action: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        body = body or {}
        if action == "start":
            return svc.start(name).to_dict()
        if action == "stop":
            return svc.stop(name, float(body.get("timeout", 10))).to_dict()
        if action == "restart":
            return svc.restart(name, float(body.get("timeout", 10))).to_dict()
        if action == "kill":
            return svc.kill(name, ctx.parse_signal(body.get("signal", "KILL"))).to_dict()
        if action == "pause":
            return svc.pause(name).to_dict()
        if action == "resume":
            return svc.resume(name).to_dict()
        if action == "update":
            return svc.update(name, body).to_dict()
        if action == "rename":
            return svc.rename(name, body.get("name")).to_dict()
        raise InvalidArgument(f"unknown action {action!r}")

    @app.delete("/v1/instances/{name}")
    def remove_instance(name: str, force: bool = False) -> dict[str, Any]:
        svc.remove(name, force=force)
        return {"removed": name}

    @app.get("/v1/instances/{name}/stats")
    def stats(name: str) -> dict[str, Any]:
        return svc.stats(name)

    @app.get("/v1/instances/{name}/logs")
    def logs(name: str, follow: bool = False, tail: int | None = None, stdout: bool = True,
             stderr: bool = True) -> StreamingResponse:
        """Frames: 1 stdout, 2 stderr (only those asked for), and when following, 3 the exit status (JSON)."""
        streams = tuple(kind for kind, wanted in ((FRAME_STDOUT, stdout), (FRAME_STDERR, stderr)) if wanted)
        if not streams:
            raise InvalidArgument("stdout, stderr: ask for at least one of the two streams")
        return StreamingResponse(ctx.follow_log(name, follow, tail=tail, streams=streams),
                                 media_type="application/vnd.virtkit.frames")

    @app.get("/v1/instances/{name}/attach")
    def attach(name: str) -> StreamingResponse:
        """Output from the start, followed until the instance stops, then one exit frame (JSON)."""
        return StreamingResponse(ctx.follow_log(name, True), media_type="application/vnd.virtkit.frames")

    @app.websocket("/v1/instances/{name}/attach")
    async def attach_ws(ws: WebSocket, name: str) -> None:
        """Output and exit as GET .../attach, plus stdin (see api/attach_session.py)."""
        await ws.accept()
        from virtkit.api.attach_session import run_attach

        await run_attach(ws, ctx, name)

    @app.websocket("/v1/instances/{name}/exec")
    async def exec_ws(ws: WebSocket, name: str) -> None:
        await ws.accept()
        from virtkit.api.exec_session import run_exec

        await run_exec(ws, ctx, name)

    @app.get("/v1/system/ksm")
    def ksm_status() -> dict[str, Any]:
        from virtkit.vm import ksm

        return ksm.status()

    @app.put("/v1/system/ksm")
    def ksm_set(body: dict[str, Any]) -> dict[str, Any]:
        """Body {"enabled": true|false}: KSM for the whole host (vm/ksm.py)."""
        from virtkit.vm import ksm

        return ksm.set_enabled(body.get("enabled"))

    @app.post("/v1/system/shutdown")
    async def shutdown() -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.1, ctx.request_shutdown)
        return {"shutting_down": True, "pid": os.getpid()}     # the client waits for it to exit

    return app

