"""Tag the SGLang frontend language's requests as one LLM program.

    backend = sgl.RuntimeEndpoint("http://127.0.0.1:30000")
    with program_endpoint(backend, "agent-7") as tagged_backend:
        state = my_sgl_function.run(question="...", backend=tagged_backend)
    # released on exit

How it works, and why this way. The frontend's `RuntimeEndpoint` sends every request (model
info at construction, `generate`, `generate_stream`, the prefix and logprob calls of `select`,
`cache_prefix`, lazy commits, `flush_cache`, ...) through one module-level function,
`http_request(url, json=..., stream=..., api_key=..., verify=..., method=...)`, imported into the
endpoint's module by name. That function builds its own headers and takes none from the caller,
and the endpoint keeps no session or header attribute, so there is no per-instance seam. Patching
the module's `http_request` would tag the requests of every endpoint in the process (and of
other threads' untagged work), so we do not. Instead `program_endpoint` builds, at call time, a
subclass of `type(endpoint)` in which each method that calls `http_request` is the same code
object re-bound to a copy of its module globals where `http_request` is a header-adding
stand-in with the same signature (stdlib `urllib`, returning an object with the
`status_code`/`json()`/`text`/`iter_lines()` the endpoint reads). A shallow copy of the given
endpoint is then given that class. So:
  * every request the tagged copy makes carries `X-Program-Id` (and `x-parent-session-id`),
    including methods added in later SGLang releases, as long as they go through `http_request`;
  * the given endpoint, and every other endpoint, are untouched and stay untagged;
  * nothing here imports SGLang: we work from `type(endpoint)` and the functions' own globals.
The copy shares the original's `model_info` and chat template, so tagging makes no request;
`type(tagged)(url)` builds further endpoints of the same program (their model-info request is
tagged too).

Release: `ProgramEndpoint.release()` posts `{"program_id": id}` to `{base_url}/programs/release`
with the endpoint's `api_key` as Bearer; a 404 (already ended) gives None; idempotent.
"""

from __future__ import annotations

import copy
import json as _json
import logging
import ssl
import types
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

from thunderagent_sglang.client.openai_program import (
    check_program_id,
    new_program_id,
    program_headers,
    release_on_exit,
    release_program,
)

logger = logging.getLogger(__name__)

REQUEST_FUNCTION = "http_request"  # the frontend's module-level request function, looked up by name
_TAG_ATTRIBUTE = "_thunderagent_program_id"


class TaggedResponse:
    """What the frontend reads from `http_request`'s answer: status_code, json(), text, iter_lines()."""

    def __init__(self, resp: Any):
        self._resp = resp
        self._body: bytes | None = None

    @property
    def status_code(self) -> int:
        status = getattr(self._resp, "status", None)
        return status if status is not None else self._resp.code

    @property
    def headers(self) -> Any:
        return self._resp.headers

    @property
    def content(self) -> bytes:
        if self._body is None:
            try:
                self._body = self._resp.read()
            finally:
                self._resp.close()
        return self._body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)

    def iter_lines(self, chunk_size: int | None = None, decode_unicode: bool = False,
                   delimiter: Any = None) -> Iterator[Any]:
        """Lines as they arrive (line endings stripped), as `requests.Response.iter_lines` gives them."""
        if self._body is not None:
            lines = self._body.splitlines()
        else:
            lines = (raw.rstrip(b"\r\n") for raw in self._resp)
        try:
            for line in lines:
                yield line.decode("utf-8", errors="replace") if decode_unicode else line
        finally:
            self._resp.close()

    def close(self) -> None:
        self._resp.close()


def make_http_request(extra_headers: dict[str, str]) -> Callable[..., TaggedResponse]:
    """A stand-in for the frontend's `http_request` that adds extra_headers to every request."""
    extra = dict(extra_headers)

    def http_request(url, json=None, stream=False, api_key=None, verify=None, method=None, headers=None):
        all_headers = {"Content-Type": "application/json; charset=utf-8"}
        if api_key is not None:
            all_headers["Authorization"] = f"Bearer {api_key}"
        all_headers.update(headers or {})
        all_headers.update(extra)
        data = None if json is None else _json.dumps(json).encode("utf-8")
        if stream and method is None:
            method = "POST"  # the original streams with requests.post
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        context = ssl.create_default_context(cafile=verify) if isinstance(verify, str) and verify else None
        try:
            resp = urllib.request.urlopen(request, context=context)
        except urllib.error.HTTPError as exc:
            resp = exc
        return TaggedResponse(resp)

    http_request.program_headers = extra  # type: ignore[attr-defined]
    return http_request


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _sends_requests(func: types.FunctionType) -> bool:
    return REQUEST_FUNCTION in set(_names(func.__code__)) and callable(func.__globals__.get(REQUEST_FUNCTION))


def _rebind(func: types.FunctionType, globals_: dict) -> types.FunctionType:
    new = types.FunctionType(func.__code__, globals_, func.__name__, func.__defaults__, func.__closure__)
    new.__kwdefaults__ = func.__kwdefaults__
    new.__qualname__ = func.__qualname__
    new.__module__ = func.__module__
    new.__doc__ = func.__doc__
    new.__annotations__ = dict(getattr(func, "__annotations__", {}) or {})
    new.__dict__.update(func.__dict__)
    return new


def tagged_class(cls: type, program_id: str, parent_id: str | None = None) -> type:
    """A subclass of cls whose requests (through the module-level `http_request`) carry the program's headers."""
    request = make_http_request(program_headers(program_id, parent_id))
    globals_copies: dict[int, dict] = {}
    namespace: dict[str, Any] = {"__slots__": (), "__module__": cls.__module__, _TAG_ATTRIBUTE: program_id}
    seen: set[str] = set()
    rebound = 0
    for klass in cls.__mro__:
        for name, value in vars(klass).items():
            if name in seen:
                continue
            seen.add(name)
            wrapper = type(value) if isinstance(value, (staticmethod, classmethod)) else None
            func = value.__func__ if wrapper else value
            if not isinstance(func, types.FunctionType) or not _sends_requests(func):
                continue
            key = id(func.__globals__)
            if key not in globals_copies:
                globals_copies[key] = {**func.__globals__, REQUEST_FUNCTION: request}
            new = _rebind(func, globals_copies[key])
            namespace[name] = wrapper(new) if wrapper else new
            rebound += 1
    if not rebound:
        raise TypeError(
            f"{cls.__module__}.{cls.__qualname__} sends no request through a module-level "
            f"{REQUEST_FUNCTION}(); program_endpoint tags SGLang's RuntimeEndpoint (sgl.RuntimeEndpoint "
            f"or a Runtime). For an OpenAI-compatible backend tag the openai client with Program instead.")
    name = cls.__name__ if cls.__name__.startswith("Program") else "Program" + cls.__name__
    new_cls = type(cls)(name, (cls,), namespace)
    new_cls.__qualname__ = name
    return new_cls


def program_id_of(endpoint: Any) -> str | None:
    """The program id an endpoint made by program_endpoint tags its requests with; None if untagged."""
    return getattr(type(endpoint), _TAG_ATTRIBUTE, None)


class ProgramEndpoint:
    """One program on an SGLang frontend endpoint: `endpoint` is the tagged copy to pass as backend=."""

    def __init__(self, endpoint: Any, program_id: str | None = None, *, parent_id: str | None = None):
        if hasattr(endpoint, "endpoint"):
            endpoint = endpoint.endpoint  # an sgl.Runtime (the frontend's own rule): tag its RuntimeEndpoint
        self.program_id: str = new_program_id() if program_id is None else check_program_id(program_id)
        self.parent_id: str | None = None if parent_id is None else check_program_id(parent_id, "parent_id")
        tagged = copy.copy(endpoint)
        tagged.__class__ = tagged_class(type(endpoint), self.program_id, self.parent_id)
        self.endpoint = tagged
        self.released = False

    @property
    def server_url(self) -> str:
        return str(self.endpoint.base_url).rstrip("/")

    def release(self) -> dict | None:
        """End the program on the server; its record, or None if already ended (404 or released before)."""
        if self.released:
            return None
        record = release_program(self.server_url, self.program_id, getattr(self.endpoint, "api_key", None))
        self.released = True
        return record

    def __enter__(self) -> Any:
        return self.endpoint

    def __exit__(self, exc_type, exc, tb) -> None:
        release_on_exit(self, exc_type)

    def __repr__(self) -> str:
        return f"ProgramEndpoint(program_id={self.program_id!r}, released={self.released})"


def program_endpoint(endpoint: Any, program_id: str | None = None, *,
                     parent_id: str | None = None) -> ProgramEndpoint:
    """Tag a copy of an SGLang frontend endpoint; `with program_endpoint(b, id) as tagged:` releases on exit."""
    return ProgramEndpoint(endpoint, program_id, parent_id=parent_id)
