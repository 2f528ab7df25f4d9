"""The HTTP API (docs/interfaces.md, "Sidecar"): routes only; the manager does the work.

Every route needs ``Authorization: Bearer <token>``. Errors are JSON ``{"detail": ...}``
saying what to do; malformed bodies are 400; no stack trace reaches a client.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from thunderagent_sglang.program import events
from thunderagent_sglang.sidecar import auth, reconcile, stats
from thunderagent_sglang.sidecar.errors import SidecarError
from thunderagent_sglang.sidecar.manager import EnvManager
from thunderagent_sglang.sidecar.models import CreateBody, EventBody, ExecBody, to_spec
from thunderagent_sglang.sidecar.reporter import ServerReporter

log = logging.getLogger("thunderagent_sglang.sidecar")


def create_app(manager: EnvManager, token: str, reporter: ServerReporter) -> FastAPI:
    # Commands (which may run for their whole timeout) get their own threads, so that any
    # number of long execs never keeps a destroy, a file call or an event waiting.
    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="sidecar")
    exec_pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="sidecar-exec")
    background: set[asyncio.Task] = set()  # running "prepare" tasks (kept from the GC)
    settings = manager.settings

    async def blocking(fn, *args, executor=pool):
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    def in_background(coro) -> None:
        task = asyncio.create_task(coro)
        background.add(task)
        task.add_done_callback(background.discard)

    async def gc_loop():
        while True:
            await asyncio.sleep(settings.gc_interval)
            try:
                await blocking(manager.gc_tick)
                await blocking(manager.refresh_disk)
                reporter.sweep(manager.programs_with_environments())
            except Exception:
                log.exception("lifecycle check failed")

    @asynccontextmanager
    async def lifespan(_app):
        reporter.start()
        task = asyncio.create_task(gc_loop())
        if settings.server_url:
            in_background(reconcile.reconcile_loop(manager, settings.server_url, blocking))
        yield
        task.cancel()
        for pending in list(background):
            pending.cancel()
        await blocking(manager.shutdown)
        await reporter.stop()
        for executor in (exec_pool, pool):
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ThunderAgent sidecar", lifespan=lifespan)
    _install_error_handlers(app)

    @app.middleware("http")
    async def token_gate(request: Request, call_next):
        # Before any body parsing: a request without the token learns nothing else.
        try:
            auth.check(request.headers.get("authorization"), token)
        except SidecarError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.status)
        return await call_next(request)

    @app.post("/envs", status_code=201)
    async def create_env(body: CreateBody):
        spec = to_spec(body, settings)
        try:
            return (await blocking(manager.create, spec)).to_json()
        finally:
            reporter.environments(spec.program_id)

    @app.get("/envs")
    async def list_envs():
        return {"envs": [e.to_json() for e in manager.list()]}

    @app.get("/envs/{env_id}")
    async def get_env(env_id: str):
        return manager.get(env_id).to_json()

    @app.delete("/envs/{env_id}")
    async def destroy_env(env_id: str):
        program_id = manager.program_of(env_id)
        destroyed = await blocking(manager.destroy, env_id)
        reporter.environments(program_id)
        return {"env_id": env_id, "destroyed": destroyed}

    @app.post("/envs/{env_id}/exec")
    async def exec_env(env_id: str, body: ExecBody):
        program_id = manager.get(env_id).spec.program_id
        loop = asyncio.get_running_loop()
        listed = lambda: loop.call_soon_threadsafe(reporter.environments, program_id)  # noqa: E731
        reporter.tool(program_id, "start", body.expected_s, body.tool)
        try:
            result = await blocking(manager.exec, env_id, body.cmd, body.cwd, body.env,
                                    body.timeout, body.tool, listed, executor=exec_pool)
        finally:
            reporter.tool(program_id, "end")
            reporter.environments(program_id)
        return result.to_json()

    @app.get("/envs/{env_id}/files/{path:path}")
    async def read_file(env_id: str, path: str):
        data = await blocking(manager.read_file, env_id, path)
        return Response(content=data, media_type="application/octet-stream")

    @app.put("/envs/{env_id}/files/{path:path}")
    async def write_file(env_id: str, path: str, request: Request):
        data = await request.body()
        await blocking(manager.write_file, env_id, path, data)
        return {"env_id": env_id, "path": path, "bytes": len(data)}

    @app.post("/envs/{env_id}/snapshot", status_code=201)
    async def snapshot_env(env_id: str):
        info = await blocking(manager.snapshot, env_id)
        return {"snapshot": info.name, "env_id": env_id, "layers": list(info.chain)}

    @app.post("/envs/{env_id}/pause")
    async def pause_env(env_id: str):
        env = await blocking(manager.pause, env_id)
        reporter.environments(env.spec.program_id)
        return env.to_json()

    @app.post("/envs/{env_id}/resume")
    async def resume_env(env_id: str):
        env = await blocking(manager.resume, env_id)
        reporter.environments(env.spec.program_id)
        return env.to_json()

    @app.post("/events")
    async def program_event(body: EventBody):
        envs = await blocking(manager.event, body.program_id, body.event)
        reporter.environments(body.program_id)
        if body.event in (events.PREPARE, events.RESUMED):
            in_background(blocking(manager.prepare, body.program_id))
            return JSONResponse({"program_id": body.program_id, "event": body.event,
                                 "envs": envs, "accepted": True}, status_code=202)
        return {"program_id": body.program_id, "event": body.event, "envs": envs}

    @app.get("/stats")
    async def get_stats():
        return stats.build(manager)

    @app.get("/metrics")
    async def get_metrics():
        body = stats.render(stats.build(manager))
        return Response(content=body, media_type="text/plain; version=0.0.4")

    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SidecarError)
    async def sidecar_error(_request, exc: SidecarError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_body(_request, exc: RequestValidationError):
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return JSONResponse({"detail": f"malformed request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(_request, exc: Exception):
        log.error("request failed", exc_info=exc)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}: {exc}); the "
                             "sidecar log has the details"}, status_code=500)
