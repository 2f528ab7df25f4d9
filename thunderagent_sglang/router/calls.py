"""Generating calls through the router: identity as the server reads it, the replica chosen
(replica-local state first, then the program's placement, then cache-aware for untagged
calls), sent, handed back and sent again when its program moved, and streamed to the client."""

from __future__ import annotations

import asyncio
import logging
import re

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from thunderagent_sglang.policy.affinity import prefix_keys
from thunderagent_sglang.program.identity import (
    ADMIN_KEY_HEADER,
    HELD_HEADER,
    InvalidFinalMarker,
    InvalidProgramId,
    extract_identity,
    invalid_identity_body,
)
from thunderagent_sglang.router import forward

log = logging.getLogger("thunderagent.router")
PROMPT_FIELDS = ("system", "instructions", "messages", "prompt", "text", "input_ids", "input")
_RESPONSE_ID = re.compile(rb'"id"\s*:\s*"(resp_[^"]{1,200})"')
_SESSION_ID = re.compile(rb'^"?([A-Za-z0-9._:-]{1,256})"?$')


def error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "router_error", "code": status}},
                        status_code=status, headers=headers or None)


def no_replica() -> JSONResponse:
    return error(503, "no replica is ready; retry shortly", **{"Retry-After": "1"})


def _json_object(body: bytes) -> dict | None:
    try:
        value = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None  # the replica answers malformed JSON itself
    return value if isinstance(value, dict) else None


def prompt_text(obj: dict | None) -> str:
    if not obj:
        return ""
    return "".join(orjson.dumps(obj[f]).decode() for f in PROMPT_FIELDS if f in obj)


def _pinned(router, path: str, obj: dict | None) -> tuple[str | None, str | None]:
    """(the replica a call must go to, what pins it) for replica-local state: a Responses
    ``previous_response_id`` or an SGLang session."""
    if not obj:
        return None, None
    if path == "/v1/responses" and isinstance(obj.get("previous_response_id"), str):
        key = obj["previous_response_id"]
        return router.state.responses.get(key, ""), f"previous_response_id {key!r}"
    session = obj.get("session_params")
    if isinstance(session, dict) and isinstance(session.get("id"), str):
        key = session["id"]
        return router.state.sessions.get(key, ""), f"session {key!r}"
    return None, None


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(request: Request, coro):
    """``coro``'s result, or None if the client went away first (the call is cancelled, so
    the replica sees its connection close and aborts it)."""
    task = asyncio.ensure_future(coro)
    gone = asyncio.ensure_future(_until_disconnect(request))
    done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        gone.cancel()
        return task.result()
    task.cancel()
    try:
        await task
    except BaseException:  # noqa: BLE001 - cancelled, or failed as it was cancelled
        pass
    return None


async def generating_call(router, request: Request) -> Response:
    body = await request.body()
    obj = _json_object(body)
    try:
        identity = extract_identity(dict(request.headers), obj, router.settings.id_sources)
    except (InvalidProgramId, InvalidFinalMarker) as exc:
        return JSONResponse(status_code=400, content=invalid_identity_body(exc))
    pid = identity.program_id
    pinned, pin = _pinned(router, request.url.path, obj)
    if pinned == "":
        return error(409, f"{pin} is unknown to this router or lived on a replica that is "
                     "gone; start a new conversation (without it)")
    if pinned is not None and not getattr(router.fleet.replicas.get(pinned), "ready", False):
        return error(409, f"{pin} lives on replica {pinned}, which is not available; "
                     "start a new conversation (without it)")
    keys = prefix_keys(prompt_text(obj))
    headers = forward.request_headers(request.headers)
    started = router.clock()
    tried: set[str] = set()
    retried = False
    for _ in range(router.settings.max_attempts + 1):
        await router.wait_if_moving(pid)
        if pinned is not None:
            replica = router.fleet.replicas.get(pinned)
            if replica is None:
                return error(409, f"{pin} lived on replica {pinned}, which was removed; "
                             "start a new conversation (without it)")
        else:
            replica = router.replica_for(pid, keys, frozenset(tried))
        if replica is None:
            return no_replica()
        replica.calls += 1
        try:
            upstream = await _unless_gone(request, forward.send(
                router.client, replica.url, request.method, request.url.path,
                request.url.query.encode(), headers, body))
        except forward.ConnectFailed as exc:
            replica.calls -= 1
            router.fleet.take_out(replica, f"connect failed: {exc}")
            if retried or pinned is not None:
                return error(502, f"replica {replica.url} could not be reached: {exc}")
            retried, _ = True, tried.add(replica.url)
            router.state.counters["retried_connect"] += 1
            continue
        except forward.UpstreamFailed as exc:
            replica.calls -= 1
            if not retried and pinned is None and await router.gone(replica):
                # it died before answering anything: the call ran nowhere else and nothing
                # reached the client, so it is sent once to another replica
                router.fleet.take_out(replica, f"died while answering ({exc})")
                retried, _ = True, tried.add(replica.url)
                router.state.counters["resent_after_failure"] += 1
                log.warning("router: replica %s died before answering a call; sent again "
                            "elsewhere", replica.url)
                continue
            router.state.counters["failed_upstream"] += 1
            return error(502, f"replica {replica.url} failed after the call was sent ({exc}); "
                         "it was not retried")
        if upstream is None:
            replica.calls -= 1
            return Response(status_code=499)
        if upstream.migrated:
            replica.calls -= 1
            await upstream.close()
            router.state.counters["resent"] += 1
            if pid is not None and router.state.placement.get(pid) == replica.url:
                del router.state.placement[pid]  # ended there without the router asking
            headers = held_headers(headers, router.clock() - started,
                                   router.settings.backend_admin_key)
            continue
        if pid is None:
            router.affinity.record(replica.url, keys)
        elif pinned is None:
            router.affinity.record(replica.url, keys[:1])  # its shared prefix, for ties
        _remember_local_state(router, request.url.path, replica.url, upstream.head)
        return _stream(router, replica, upstream)
    return error(502, f"the call was handed back {router.settings.max_attempts} times while "
                 "its program moved between replicas; send it again")


def held_headers(headers: dict[str, str], held_s: float,
                 admin_key: str | None) -> dict[str, str]:
    """A handed-back call's headers for its next replica: how long it has been held so far
    (counted toward that replica's max pause), with the admin key that lets the router say
    so; the client's own values of these headers are replaced."""
    names = (HELD_HEADER, ADMIN_KEY_HEADER)
    out = {k: v for k, v in headers.items() if k.lower() not in names}
    out[HELD_HEADER] = f"{max(0.0, held_s):.3f}"
    if admin_key:
        out[ADMIN_KEY_HEADER] = admin_key
    return out


def _remember_local_state(router, path: str, url: str, head: bytes) -> None:
    if path == "/v1/responses":
        match = _RESPONSE_ID.search(head)
        if match:
            router.state.responses[match.group(1).decode()] = url


def _stream(router, replica, upstream: forward.Upstream) -> Response:
    streamed = upstream.response.headers.get("content-type", "").startswith("text/event-stream")

    async def body():
        try:
            yield upstream.head
            async for chunk in upstream.rest():
                yield chunk
        except forward.UpstreamFailed as exc:
            router.state.counters["failed_upstream"] += 1
            log.warning("router: replica %s failed while answering: %s", replica.url, exc)
            if streamed:
                message = f"replica {replica.url} failed while answering ({exc})"
                yield b"data: " + orjson.dumps({"error": {"message": message, "code": 502}}) \
                    + b"\n\n"
        finally:
            replica.calls -= 1

    return StreamingResponse(body(), status_code=upstream.status,
                             headers=dict(upstream.headers()),
                             media_type=upstream.response.headers.get("content-type"))


async def session_call(router, request: Request) -> Response:
    """``/open_session`` (least busy replica; its answer names the session) and
    ``/close_session`` (the session's replica)."""
    body = await request.body()
    if request.url.path == "/close_session":
        obj = _json_object(body) or {}
        where = router.state.sessions.get(obj.get("session_id")) if isinstance(
            obj.get("session_id"), str) else None
        if where is None:
            return error(409, f"session {obj.get('session_id')!r} is unknown to this router "
                         "or lived on a replica that is gone")
        replica = router.fleet.replicas.get(where)
        if replica is None:
            return error(409, f"session {obj.get('session_id')!r} lived on replica {where}, "
                         "which was removed")
    else:
        replica = router.replica_for(None, [])
        if replica is None:
            return no_replica()
    response = await _send_as_is(router, replica, request, body)
    if request.url.path == "/open_session" and response.status_code == 200:
        match = _SESSION_ID.match(response.head.strip())
        if match:
            router.state.sessions[match.group(1).decode()] = replica.url
    return response


async def pass_through(router, request: Request) -> Response:
    """Any other route (model info, health_generate, flush_cache, ...): the least busy ready
    replica answers."""
    replica = router.replica_for(None, [])
    if replica is None:
        return no_replica()
    return await _send_as_is(router, replica, request, await request.body())


async def _send_as_is(router, replica, request: Request, body: bytes) -> Response:
    """The call sent unchanged to ``replica`` and its answer streamed back (502 naming the
    replica if it fails); the answer's ``head`` stays readable on the response."""
    try:
        upstream = await forward.send(router.client, replica.url, request.method,
                                      request.url.path, request.url.query.encode(),
                                      forward.request_headers(request.headers), body)
    except (forward.ConnectFailed, forward.UpstreamFailed) as exc:
        return error(502, f"replica {replica.url}: {exc}")
    replica.calls += 1
    response = _stream(router, replica, upstream)
    response.head = upstream.head
    return response
