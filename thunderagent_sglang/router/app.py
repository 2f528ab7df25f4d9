"""The router's HTTP app: the generating routes (``calls``), the program routes across
replicas, its own ``/health``, ``/metrics`` and ``/router/replicas``, and every other route
passed to a ready replica."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import statistics
from urllib.parse import quote

import httpx
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from thunderagent_sglang.program.identity import InvalidProgramId, check_program_id, tagged_paths
from thunderagent_sglang.router import calls, forward
from thunderagent_sglang.router.core import Router
from thunderagent_sglang.router.settings import SettingsError, backend_name, backend_url

OPEN_PATHS = frozenset({"/health", "/metrics"})


def _program_error(status: int, message: str) -> JSONResponse:
    """The server's program-route error shape."""
    return JSONResponse({"error": message}, status_code=status)


def _key_given(request: Request, key: str, x_api_key: bool = True) -> bool:
    """Whether the request carries ``key`` as a bearer token (or, for clients, ``x-api-key``)."""
    given = request.headers.get("authorization", "")
    if given.lower().startswith("bearer "):
        given = given[7:]
    else:
        given = request.headers.get("x-api-key", "") if x_api_key else ""
    return hmac.compare_digest(given.encode(), key.encode())


def _authorized(router: Router, request: Request) -> bool:
    key = router.settings.api_key
    return not key or request.url.path in OPEN_PATHS or _key_given(request, key)


async def _get_json(router: Router, url: str, path: str, request: Request):
    try:
        response = await router.client.get(f"{url}{path}", params=dict(request.query_params),
                                           headers=forward.request_headers(request.headers),
                                           timeout=10)
    except httpx.HTTPError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    try:
        return response, response.json()
    except ValueError:
        return response, None


async def list_programs(router: Router, request: Request) -> Response:
    """The union of every ready replica's ``GET /programs``, each record with its replica."""
    replicas = router.fleet.ready()
    answers = await asyncio.gather(*(_get_json(router, r.url, "/programs", request)
                                     for r in replicas))
    programs, per_replica = [], []
    for replica, (response, body) in zip(replicas, answers):
        if response is not None and response.status_code in (401, 403):
            return JSONResponse(body, status_code=response.status_code)
        if response is None or response.status_code != 200 or not isinstance(body, dict):
            per_replica.append({"replica": replica.url, "ready": False, "error": str(body)})
            continue
        for record in body.get("programs", []):
            programs.append(_annotated(router, {**record, "replica": replica.url}))
        per_replica.append({"replica": replica.url, "ready": True,
                            **{k: v for k, v in body.items() if k != "programs"}})
    per_replica += [{"replica": r.url, "ready": False, "error": r.refused or "not answering"}
                    for r in router.fleet.replicas.values() if not r.ready]
    return JSONResponse({
        "programs": programs,
        "demand_tokens": sum(r.get("demand_tokens", 0) for r in per_replica),
        "resident_tokens": sum(r.get("resident_tokens", 0) for r in per_replica),
        "replicas": per_replica})


def _annotated(router: Router, record: dict) -> dict:
    pid = record.get("program_id")
    if pid in router.state.lost:
        record["kv_lost_on"] = router.state.lost[pid]  # its replica was taken out with its KV
    if pid in router.state.moved:
        record["moved_from"] = router.state.moved[pid]
    return record


def _candidates(router: Router, program_id: str) -> list:
    where = router.state.placement.get(program_id)
    ready = router.fleet.ready()
    first = [r for r in ready if r.url == where]
    return first + [r for r in ready if r.url != where]


ENDING_PATHS = ("/release", "/migrate")  # a program's room is freed on its replica


async def on_program(router: Router, request: Request, program_id: str, path: str) -> Response:
    """One program's route: its replica first, then the others; 404 when none knows it."""
    try:
        check_program_id(program_id, "program id in the path" if "{id}" in path
                         else "body field 'program_id'")
    except InvalidProgramId as exc:
        return _program_error(400, str(exc))
    body = await request.body()
    headers = forward.request_headers(request.headers)
    target = path.replace("{id}", quote(program_id, safe=""))
    for replica in _candidates(router, program_id):
        try:
            upstream = await forward.send(router.client, replica.url, request.method, target,
                                          request.url.query.encode(), headers, body)
        except (forward.ConnectFailed, forward.UpstreamFailed) as exc:
            return _program_error(502, f"replica {replica.url}: {exc}")
        if upstream.status == 404 and len(router.fleet.ready()) > 1:
            await upstream.close()
            continue
        if upstream.status == 200 and request.method == "GET":
            record = _annotated(router, {**orjson.loads(upstream.head), "replica": replica.url})
            return JSONResponse(record)
        if upstream.status == 200 and path.endswith(ENDING_PATHS):
            # the replica's measure dropped at once: the next placement reads it, not a view
            # up to a poll interval old (a client ending a program often starts the next)
            await router.refresh(replica)
        return Response(upstream.head, status_code=upstream.status,
                        headers=dict(upstream.headers()))
    return _program_error(404, f"unknown program id {program_id!r}")


async def release_own(router: Router, request: Request) -> Response:
    body = await request.body()
    try:
        value = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        return _program_error(400, f"the body must be a JSON object: {exc}")
    if not isinstance(value, dict):
        return _program_error(400, f"the body must be a JSON object, got {type(value).__name__}")
    try:
        pid = check_program_id(value.get("program_id"), "body field 'program_id'")
    except InvalidProgramId as exc:
        return _program_error(400, str(exc))
    return await on_program(router, request, pid, "/programs/release")


def _admin_allowed(router: Router, request: Request) -> Response | None:
    """None when the request carries the router's --admin-api-key; else the error to answer."""
    key = router.settings.admin_api_key
    if not key:
        return calls.error(403, "registering replicas at run time is off: start the router "
                           "with --admin-api-key")
    if not _key_given(request, key, x_api_key=False):
        return calls.error(401, "missing or wrong admin key (send --admin-api-key as a "
                           "bearer token)")
    return None


async def put_backend(router: Router, request: Request, name: str) -> Response:
    """``PUT /router/backends/{name}`` with ``{"url": ...}``: add replica ``name`` or move it
    to a new URL (its old one is taken out, as a replica that went down)."""
    refused = _admin_allowed(router, request)
    if refused is not None:
        return refused
    try:
        value = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return calls.error(400, f"the body must be a JSON object with 'url': {exc}")
    try:
        name = backend_name(name)
        if not isinstance(value, dict) or not isinstance(value.get("url"), str):
            raise SettingsError("the body must be a JSON object with 'url', such as "
                                '{"url": "http://10.0.0.2:30000"}')
        url = backend_url(value["url"])
    except SettingsError as exc:
        return calls.error(400, str(exc))
    try:
        old = router.fleet.register(name, url)
    except ValueError as exc:
        return calls.error(409, str(exc))
    return JSONResponse({"name": name, "url": url, "replaced": old})


async def delete_backend(router: Router, request: Request, name: str) -> Response:
    refused = _admin_allowed(router, request)
    if refused is not None:
        return refused
    url = router.fleet.remove(name)
    if url is None:
        return calls.error(404, f"no replica is named {name!r}")
    return JSONResponse({"name": name, "url": url, "removed": True})


async def events_per_replica(router: Router, request: Request) -> Response:
    return calls.error(501, "program events are numbered per replica: read GET "
                       "/programs/events (or open /thunderagent/view) on each replica; "
                       "GET /router/replicas lists them")


async def health(router: Router, request: Request) -> Response:
    ready = len(router.fleet.ready())
    if ready:
        return JSONResponse({"status": "ok", "ready_replicas": ready})
    return JSONResponse({"status": "unavailable", "ready_replicas": 0}, status_code=503)


def replicas_status(router: Router) -> dict:
    now = router.clock()
    out = []
    for r in router.fleet.replicas.values():
        polls = sorted(r.poll_seconds)
        out.append({
            "replica": r.url, "name": r.label, "ready": r.ready, "refused": r.refused, "calls": r.calls,
            "programs": len(r.records), "downs": r.downs, "polls": r.polls,
            "poll_failures": r.poll_failures,
            "view_age_s": round(now - r.view_at, 3) if r.view_at else None,
            "poll_p50_s": round(statistics.median(polls), 4) if polls else None,
            "poll_p99_s": round(polls[min(len(polls) - 1, int(0.99 * len(polls)))], 4)
            if polls else None,
            "free_tokens": r.load().free_tokens if r.ready else None})
    return {"replicas": out, "counters": router.state.counters,
            "placed_programs": len(router.state.placement),
            "poll_interval_s": router.settings.poll_interval_s}


class _Collector:
    def __init__(self, router: Router):
        self.router = router

    def collect(self):
        status = replicas_status(self.router)
        events = CounterMetricFamily("thunderagent_router_events", "Router events, by kind.",
                                     labels=["event"])
        for name, value in status["counters"].items():
            events.add_metric([name], value)
        yield events
        up = GaugeMetricFamily("thunderagent_router_replica_up",
                               "1 while the replica is used.", labels=["replica"])
        calls_now = GaugeMetricFamily("thunderagent_router_calls",
                                      "Calls sent to the replica and not yet answered.",
                                      labels=["replica"])
        age = GaugeMetricFamily("thunderagent_router_view_age_seconds",
                                "Age of the router's view of the replica.", labels=["replica"])
        for r in status["replicas"]:
            up.add_metric([r["replica"]], 1 if r["ready"] else 0)
            calls_now.add_metric([r["replica"]], r["calls"])
            if r["view_age_s"] is not None:
                age.add_metric([r["replica"]], r["view_age_s"])
        yield from (up, calls_now, age)
        yield GaugeMetricFamily("thunderagent_router_programs", "Programs placed.",
                                value=status["placed_programs"])


def build_app(router: Router) -> Starlette:
    registry = CollectorRegistry()
    registry.register(_Collector(router))
    tagged = tagged_paths()

    def bound(handler, *extra):
        async def endpoint(request: Request):
            if not _authorized(router, request):
                return calls.error(401, "missing or wrong API key (send it as a bearer token)")
            params = [request.path_params[name] for name in extra]
            return await handler(router, request, *params)
        return endpoint

    def admin(handler, *extra):  # its own key (checked by the handler), not the client's
        async def endpoint(request: Request):
            return await handler(router, request, *[request.path_params[n] for n in extra])
        return endpoint

    async def metrics(router_, request):
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def status(router_, request):
        return JSONResponse(replicas_status(router_))

    async def any_route(router_, request):
        if request.method == "POST" and request.url.path in tagged:
            return await calls.generating_call(router_, request)
        return await calls.pass_through(router_, request)

    def program_op(suffix):
        async def op(router_, request, program_id):
            return await on_program(router_, request, program_id, "/programs/{id}" + suffix)
        return op

    async def get_one(router_, request, program_id):
        return await on_program(router_, request, program_id, "/programs/{id}")

    routes = [
        Route("/health", bound(health), methods=["GET"]),
        Route("/metrics", bound(metrics), methods=["GET"]),
        Route("/router/replicas", bound(status), methods=["GET"]),
        Route("/router/backends/{name}", admin(put_backend, "name"), methods=["PUT"]),
        Route("/router/backends/{name}", admin(delete_backend, "name"), methods=["DELETE"]),
        Route("/programs", bound(list_programs), methods=["GET"]),
        Route("/programs/release", bound(release_own), methods=["POST"]),
        Route("/programs/events", bound(events_per_replica), methods=["GET"]),
        *[Route("/programs/{program_id:path}/" + op, bound(program_op("/" + op), "program_id"),
                methods=["POST"]) for op in ("tool", "pause", "resume", "release", "migrate")],
        Route("/programs/{program_id:path}/environments",
              bound(program_op("/environments"), "program_id"), methods=["PUT"]),
        Route("/programs/{program_id:path}", bound(get_one, "program_id"), methods=["GET"]),
        Route("/profiles/{program_id:path}", bound(get_one, "program_id"), methods=["GET"]),
        Route("/open_session", bound(calls.session_call), methods=["POST"]),
        Route("/close_session", bound(calls.session_call), methods=["POST"]),
        Route("/{path:path}", bound(any_route),
              methods=["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await router.start()
        yield
        await router.stop()

    return Starlette(routes=routes, lifespan=lifespan)
