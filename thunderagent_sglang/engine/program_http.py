"""HTTP-process side of programs: identity on every request, the /programs routes.

An ASGI middleware reads the program id (headers and JSON body, by the
configured precedence) of every call to a generating route (``TAGGED_PATHS``:
/generate, OpenAI, Anthropic Messages, Responses, Ollama), answers 400 for an
invalid one, and stamps ``X-Program-Id`` on the response. A hook on
``TokenizerManager.generate_request`` carries the id to the scheduler inside
``sampling_params.custom_params`` (the prefix-cache namespace is untouched).
"""

from __future__ import annotations

import asyncio
import hmac

import orjson

from fastapi import Request
from fastapi.responses import JSONResponse, ORJSONResponse
from sglang.srt.entrypoints.http_server import app, get_global_state
from sglang.srt.managers.communicator import FanOutCommunicator
from sglang.srt.utils.auth import AuthLevel, auth_level
from sglang.utils import TypeBasedDispatcher

from thunderagent_sglang import compat, config
from thunderagent_sglang.engine import hooks, program_ipc
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine import view_http
from thunderagent_sglang.engine.metrics_http import AppendMetrics, MetricsMiddleware
from thunderagent_sglang.program.identity import (
    ADMIN_KEY_HEADER,
    FINAL_BODY_FIELD,
    Identity,
    InvalidFinalMarker,
    InvalidProgramId,
    check_program_id,
    extract_identity,
    invalid_identity_body,
    names_program,
    tagged_paths,
)
from thunderagent_sglang.program.environments import check_environments
from thunderagent_sglang.program.table import check_expected_s, check_tool_event
from thunderagent_sglang.program.tool_time import check_tool_name

TAGGED_PATHS = tagged_paths()
STATE_KEY = "thunderagent_identity"


class IdentityMiddleware:
    """Pure ASGI (keeps streaming and client-disconnect events intact)."""

    def __init__(self, app, id_sources: tuple[str, ...], admin_key=None):
        self.app = app
        self.id_sources = id_sources
        self.admin_key = admin_key or _admin_key  # () -> SGLang's --admin-api-key or None
        body_fields = [s.split(":", 1)[1] for s in id_sources if s.startswith("body:")]
        self.body_fields = tuple(f'"{name}"'.encode() for name in [*body_fields, FINAL_BODY_FIELD])

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in TAGGED_PATHS:
            return await self.app(scope, receive, send)
        body, receive = await _buffer_body(receive)
        try:
            identity = extract_identity(_headers(scope), _json_object(body, self.body_fields),
                                        self.id_sources)
        except (InvalidProgramId, InvalidFinalMarker) as exc:
            response = JSONResponse(status_code=400, content=invalid_identity_body(exc))
            return await response(scope, receive, send)
        if identity.held_s is not None and not _may_credit(scope, self.admin_key()):
            response = JSONResponse(status_code=403, content={"error": HELD_NEEDS_KEY})
            return await response(scope, receive, send)
        scope.setdefault("state", {})[STATE_KEY] = identity
        await self.app(scope, receive, _stamping(send, identity))


HELD_NEEDS_KEY = (
    "X-ThunderAgent-Held-S is for a router that moved this call's program between replicas: "
    "this server has an admin key, so the call must carry it in X-ThunderAgent-Admin-Key "
    "(the router's --backend-admin-key); clients leave both headers out")


def _may_credit(scope, admin_key: str | None) -> bool:
    """A call may say it was held elsewhere when the server has no admin key (its operator
    routes, force-resume included, are open to every caller) or it carries that key."""
    if not admin_key:
        return True
    given = dict(scope["headers"]).get(ADMIN_KEY_HEADER.encode(), b"")
    return hmac.compare_digest(given, admin_key.encode())


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}


async def _buffer_body(receive):
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


def _json_object(body: bytes, fields: tuple[bytes, ...]):
    """The body as a dict, parsed only when it may hold one of our ``fields``."""
    if not body or not any(field in body for field in fields):
        return None  # most calls: no need to parse the body a second time
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None  # SGLang answers malformed JSON itself
    return value if isinstance(value, dict) else None


def _stamping(send, identity: Identity):
    if identity.program_id is None:
        return send

    async def stamped(message):
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            headers.append((b"x-program-id", identity.program_id.encode("utf-8")))
            headers.append((b"x-program-id-source", identity.source.encode("latin-1")))
            if message.get("status") == 429:  # too many held calls (--thunderagent-max-held)
                headers.append((b"retry-after", str(config.RETRY_AFTER_S).encode()))
            message = {**message, "headers": headers}
        await send(message)

    return stamped


def _tag_request(original, tokenizer_manager, obj, request=None):
    identity = _identity_of(request)
    if identity is not None and identity.program_id is not None:
        _put_identity(obj, identity)
    error = out_of_vocabulary(getattr(obj, "input_ids", None),
                              tokenizer_manager.model_config.vocab_size)
    if error is not None:
        return _failing(ValueError(error))  # SGLang answers it with HTTP 400
    return original(tokenizer_manager, obj, request)


def out_of_vocabulary(input_ids, vocab_size: int) -> str | None:
    """Why ``input_ids`` would crash the model (an id outside the vocabulary), or None.

    SGLang checks logprob token ids but not input ids; one bad id takes the
    scheduler down with an IndexError in the embedding.
    """
    if not input_ids:
        return None
    rows = input_ids if isinstance(input_ids[0], list) else [input_ids]
    for row in rows:
        try:
            extremes = (min(row), max(row)) if row else ()
        except TypeError:
            extremes = ("a non-integer",)
        for token in extremes:  # min/max run in C: cheap even for long contexts
            if not isinstance(token, int) or not 0 <= token < vocab_size:
                return (f"input_ids contains {token!r}, which is not a token id of this model: "
                        f"valid ids are integers in [0, {vocab_size})")
    return None


async def _failing(exc: Exception):
    raise exc
    yield  # an async generator, as generate_request is


def _identity_of(request) -> Identity | None:
    state = getattr(request, "scope", {}).get("state") if request is not None else None
    return state.get(STATE_KEY) if isinstance(state, dict) else None


def _put_identity(obj, identity: Identity) -> None:
    keys = {program_ipc.ID_KEY: identity.program_id, program_ipc.FINAL_KEY: identity.final}
    if identity.parent_id is not None:
        keys[program_ipc.PARENT_KEY] = identity.parent_id
    if identity.priority is not None:
        keys[program_ipc.PRIORITY_KEY] = identity.priority
    if identity.held_s:
        keys[program_ipc.HELD_KEY] = identity.held_s
    params = obj.sampling_params
    for sampling in params if isinstance(params, list) else [params]:
        if sampling is not None:
            sampling["custom_params"] = {**(sampling.get("custom_params") or {}), **keys}
    if params is None:
        obj.sampling_params = {"custom_params": keys}


def _add_communicator(result, tokenizer_manager):
    comm = FanOutCommunicator(tokenizer_manager._dispatch_to_scheduler, 1, "queueing")
    tokenizer_manager.thunderagent_communicator = comm
    tokenizer_manager._result_dispatcher += TypeBasedDispatcher(
        [(program_ipc.ProgramReply, comm.handle_recv)])


async def ask_scheduler(message) -> program_ipc.ProgramReply:
    """Send one typed control message to the scheduler and wait for its reply."""
    manager = get_global_state().tokenizer_manager
    manager.auto_create_handle_loop()
    (out,) = await manager.thunderagent_communicator(message)
    return out


async def control(message) -> ORJSONResponse:
    out = await ask_scheduler(message)
    return ORJSONResponse(status_code=out.status, content=out.body)


def _invalid(exc: ValueError) -> ORJSONResponse:
    """A program route's 400, in the same shape as the scheduler's answers (404s included)."""
    return ORJSONResponse(status_code=400, content={"error": str(exc)})


async def _fetch_stats() -> tuple[int, dict]:
    out = await ask_scheduler(program_ipc.ProgramStats())
    return out.status, out.body


async def _body_object(request: Request) -> dict:
    """The route's body as a JSON object; ValueError (our 400) for anything else, so a bad body
    never reaches SGLang's validation handler (its message names our source lines)."""
    body = await request.body()
    try:
        value = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"the body must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the body must be a JSON object, got {type(value).__name__}")
    return value


async def list_programs(live: str | None = None):
    """``GET /programs``; ``?live=1``: without the records of ended programs (a router's
    poll)."""
    return await control(program_ipc.ListPrograms(live_only=live in ("1", "true")))


MAX_SEQ = 2 ** 53  # what the IPC's msgpack carries
MAX_WAIT_S = 10.0
WAIT_STEP_S = 0.1


async def program_events(since: str = "0", limit: str = "1000", wait: str = "0"):
    """``GET /programs/events?since=SEQ&limit=N&wait=S``: the live view's history
    (program/event_ring); with ``wait``, answered once there is a newer event or after S
    seconds (the scheduler asked every 0.1 s meanwhile), so a page sees news at once while
    polling rarely."""
    try:
        since_n, limit_n, wait_s = int(since), int(limit), float(wait)
    except ValueError:
        return _invalid(ValueError("since and limit must be integers, wait a number"))
    # the ring checks both ranges; these bounds only keep the numbers within what IPC carries
    if not since_n < MAX_SEQ or not limit_n < MAX_SEQ:
        return _invalid(ValueError(f"since must be 0..{MAX_SEQ - 1}"))
    if not 0 <= wait_s <= MAX_WAIT_S:
        return _invalid(ValueError(f"wait must be 0..{MAX_WAIT_S:g} seconds"))
    deadline = asyncio.get_running_loop().time() + wait_s
    while True:
        out = await ask_scheduler(program_ipc.ProgramEvents(since=since_n, limit=limit_n))
        if out.status != 200 or out.body["events"] \
                or asyncio.get_running_loop().time() + WAIT_STEP_S > deadline:
            return ORJSONResponse(status_code=out.status, content=out.body)
        await asyncio.sleep(WAIT_STEP_S)


async def _on_program(message_type, program_id: str, what: str = "program id in the path",
                      **fields):
    """One program's operation, its id checked by the one rule every id source follows."""
    try:
        check_program_id(program_id, what)
    except InvalidProgramId as exc:
        return _invalid(exc)
    return await control(message_type(program_id=program_id, **fields))


async def get_program(program_id: str):
    return await _on_program(program_ipc.GetProgram, program_id)


def _own_release(cfg: config.ThunderAgentConfig):
    """``POST /programs/release {"program_id": ...}``: a client ends its own program. With
    SGLang's --admin-api-key set, the call must name the program in an id header (as its calls
    do); another client's program is released through the operator route."""

    async def release_program(request: Request):
        try:
            body = await _body_object(request)
        except ValueError as exc:
            return _invalid(exc)
        program_id = body.get("program_id")
        try:
            check_program_id(program_id, "body field 'program_id'")
        except InvalidProgramId as exc:
            return _invalid(exc)
        if _admin_key() and not names_program(request.headers, program_id, cfg.id_sources):
            return ORJSONResponse(status_code=403, content={"error": OWN_RELEASE_ONLY})
        return await control(program_ipc.ReleaseProgram(program_id=program_id))

    return release_program


OWN_RELEASE_ONLY = (
    "this server has an admin key: POST /programs/release ends only the caller's own program "
    "(send its id in X-Program-Id, as on its calls); an operator releases another client's "
    "program with POST /programs/{id}/release and the admin key")


def _admin_key() -> str | None:
    return getattr(get_global_state().tokenizer_manager.server_args, "admin_api_key", None)


@auth_level(AuthLevel.ADMIN_OPTIONAL)
async def operator_release(program_id: str):
    """An operator ends any program (SGLang's admin key when one is set)."""
    return await _on_program(program_ipc.ReleaseProgram, program_id)


async def tool_event(program_id: str, request: Request):
    """``{"event": "start"|"end", "expected_s"?, "tool"?}``, checked here by the table's own
    rules (so the typed message carries only valid values; the table checks again for any
    sender)."""
    try:
        body = await _body_object(request)
        event = check_tool_event(body.get("event"))
        expected_s = check_expected_s(body.get("expected_s"))
        tool = check_tool_name(body.get("tool"))
    except ValueError as exc:
        return _invalid(exc)
    return await _on_program(program_ipc.ToolHint, program_id, event=event,
                             expected_s=expected_s, tool=tool)


async def environments_report(program_id: str, request: Request):
    """The sidecar's ``{"environments": [...]}`` for the program's record (the live view shows
    it); checked here by ``program.environments`` (and again by the table)."""
    try:
        environments = check_environments(await _body_object(request))
    except ValueError as exc:
        return _invalid(exc)
    return await _on_program(program_ipc.EnvironmentReport, program_id,
                             environments=environments)


@auth_level(AuthLevel.ADMIN_OPTIONAL)
async def migrate_program(program_id: str):
    """A router moves the program: 409 while a call of it runs here; else its held calls are
    answered 421 and it ends (cause "migrated")."""
    return await _on_program(program_ipc.MigrateProgram, program_id)


@auth_level(AuthLevel.ADMIN_OPTIONAL)
async def program_digest():
    """``GET /thunderagent/digest``: rank 0's hash of its program state; every rank logs its
    own (tensor-parallel ranks must agree)."""
    return await control(program_ipc.ProgramDigest())


@auth_level(AuthLevel.ADMIN_OPTIONAL)
async def pause_program(program_id: str):
    return await _on_program(program_ipc.PauseProgram, program_id)


@auth_level(AuthLevel.ADMIN_OPTIONAL)
async def resume_program(program_id: str):
    return await _on_program(program_ipc.ResumeProgram, program_id)


def _on_sigterm(result, signal_handler, *args, **kwargs):
    """AFTER SGLang's SIGTERM handler (it starts draining): held calls are answered 503 at
    once instead of keeping the drain waiting for their programs to resume."""
    try:
        asyncio.get_running_loop().create_task(_shut_down_held())
    except RuntimeError:
        get_logger().warning("ThunderAgent: SIGTERM outside the event loop; held calls wait for resume")


async def _shut_down_held() -> None:
    out = await ask_scheduler(program_ipc.ShutDownHeld())
    get_logger().info("ThunderAgent: shutdown: scheduler answered %s %s", out.status,
                      orjson.dumps(out.body).decode())


def _is_model_update_lock(lock) -> bool:
    manager = get_global_state().tokenizer_manager
    return manager is not None and lock is getattr(manager, "model_update_lock", None)


async def _drain(on: bool) -> None:
    try:
        out = await ask_scheduler(program_ipc.DrainHeld(on=on))
        if on and out.body.get("released"):
            get_logger().info("ThunderAgent: a weight update waits for calls in flight; "
                              "%s held call(s) let go", out.body["released"])
    except Exception:  # noqa: BLE001 - never block SGLang's writer on our message
        get_logger().exception("ThunderAgent: could not reach the scheduler about a weight "
                               "update; held calls wait for their programs to resume")


async def _drain_for_writer(original, lock):
    """AROUND ``RWLock.acquire_writer``: a weight update waits for every call in flight, and a
    held call is one; let held calls go first, and hold none until the writer is done."""
    if not _is_model_update_lock(lock):
        return await original(lock)
    await _drain(True)
    try:
        return await original(lock)
    except BaseException:
        await asyncio.shield(_drain(False))
        raise


async def _writer_done(original, lock):
    """AROUND ``RWLock.release_writer``: calls may be held again."""
    result = await original(lock)
    if _is_model_update_lock(lock):
        await _drain(False)
    return result


def add_metrics_source(text) -> None:
    """Appends ``text()`` (Prometheus text) to ``GET /metrics``: the launcher's own series."""
    app.add_middleware(AppendMetrics, text=text)


def install(cfg: config.ThunderAgentConfig) -> None:
    program_ipc.register_types()
    hooks.install(compat.TOKENIZER_GENERATE_REQUEST, _tag_request, "around")
    hooks.install(compat.SIGTERM_HANDLER, _on_sigterm, "after")
    hooks.install(compat.TOKENIZER_INIT_COMMUNICATORS, _add_communicator, "after")
    hooks.install(compat.RWLOCK_ACQUIRE_WRITER, _drain_for_writer, "around")
    hooks.install(compat.RWLOCK_RELEASE_WRITER, _writer_done, "around")
    app.add_middleware(IdentityMiddleware, id_sources=cfg.id_sources)
    get_logger().info(
        "ThunderAgent: program ids are read (%s) on POST %s; SGLang's gRPC entry point and its "
        "routes that do not generate carry none", ",".join(cfg.id_sources),
        " ".join(sorted(TAGGED_PATHS)))
    app.add_middleware(MetricsMiddleware, fetch_stats=_fetch_stats)
    app.add_middleware(view_http.ViewPage)  # and again outside SGLang's API-key check when it adds one
    hooks.install(compat.ADD_API_KEY_MIDDLEWARE, view_http.outside_api_key, "after")
    routes = [
        ("/programs", list_programs, ["GET"]),
        ("/programs/release", _own_release(cfg), ["POST"]),
        # before the id route: GET /profiles/events reads a program named "events"
        ("/programs/events", program_events, ["GET"]),
        # ":path": an id may hold "/" (sent as %2F or as is); the POST routes end in a fixed
        # word, and GET has no such route, so every accepted id reaches every route.
        ("/programs/{program_id:path}/tool", tool_event, ["POST"]),
        ("/programs/{program_id:path}/environments", environments_report, ["PUT"]),
        ("/programs/{program_id:path}/pause", pause_program, ["POST"]),
        ("/programs/{program_id:path}/resume", resume_program, ["POST"]),
        ("/programs/{program_id:path}/release", operator_release, ["POST"]),
        ("/programs/{program_id:path}/migrate", migrate_program, ["POST"]),
        ("/programs/{program_id:path}", get_program, ["GET"]),
        ("/thunderagent/digest", program_digest, ["GET"]),
        ("/profiles/{program_id:path}", get_program, ["GET"]),
    ]
    for path, endpoint, methods in routes:
        app.add_api_route(path, endpoint, methods=methods)
