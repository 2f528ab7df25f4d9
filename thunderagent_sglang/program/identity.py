"""Which program a request belongs to: its id, parent and final marker (pure Python).

Reads the marks agents already send (landscape.md, "How clients mark a program today"):
headers and JSON body fields, in a configurable precedence. Bad input raises, never passes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The headers agents send (read from the shipped clients, December 2026): Claude Code 2.1.197
# sends X-Claude-Code-Session-Id on every model call (its API client's default headers); Codex
# 0.171.0 sends session-id (and thread-id) on Responses calls, earlier Codex releases session_id;
# OpenCode 1.18.33 sends X-Session-Id (and x-parent-session-id for a subagent). The README's
# "Which client sends which id" table gives the files.
DEFAULT_ID_SOURCES: tuple[str, ...] = (
    "header:x-program-id",
    "body:program_id",
    "body:job_id",
    "header:x-dynamo-session-id",
    "header:x-claude-code-session-id",
    "header:session-id",
    "header:session_id",
    "header:x-session-id",
)
PARENT_HEADERS = ("x-dynamo-parent-session-id", "x-parent-session-id", "x-claude-code-parent-agent-id")
FINAL_HEADERS = ("x-program-final", "x-dynamo-session-final")
FINAL_BODY_FIELD = "is_last_step"
MAX_ID_LENGTH = 256

_SGLANG_SESSION_FIELD = "session_id"  # SGLang's own sessions: never a program id
_SHORT_ALIASES = {src.split(":", 1)[1]: src for src in DEFAULT_ID_SOURCES}
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")  # an HTTP token, lower case
_BODY_FIELD = re.compile(r"^[^\s:,]+$")
_NOT_VISIBLE_ASCII = re.compile(r"[^\x21-\x7e]")


def tagged_paths() -> frozenset[str]:
    """Every route of SGLang 0.5.23 that generates (each passes its HTTP request on to
    TokenizerManager.generate_request, where the id is attached), and count_tokens (the id is
    read and checked, no program is created). Ollama's routes move with SGLang's variables."""
    return frozenset({
        "/generate", "/v1/chat/completions", "/v1/completions", "/v1/messages",
        "/v1/messages/count_tokens", "/v1/responses",
        os.environ.get("SGLANG_OLLAMA_CHAT_ROUTE", "/api/chat"),
        os.environ.get("SGLANG_OLLAMA_GENERATE_ROUTE", "/api/generate"),
    })


class InvalidProgramId(ValueError):
    """A program or parent id that is present but not 1-256 visible ASCII characters."""

    def __init__(self, source: str, message: str):
        super().__init__(message)
        self.source = source  # e.g. "header X-Program-Id", "body field 'program_id'"


def invalid_identity_body(exc: ValueError) -> dict:
    """The 400 body for an invalid id or mark (the server's and the router's)."""
    return {"error": {"message": str(exc), "type": "invalid_request_error",
                      "param": getattr(exc, "source", None), "code": 400}}


class InvalidFinalMarker(ValueError):
    """A final marker (X-Program-Final, X-Dynamo-Session-Final, is_last_step) with a bad value."""

    def __init__(self, source: str, message: str):
        super().__init__(message)
        self.source = source


@dataclass(frozen=True)
class Identity:
    """The program a request belongs to; program_id None means untagged."""

    program_id: str | None
    source: str | None  # the source that gave the id, e.g. "header:x-program-id"
    parent_id: str | None
    final: bool  # this call is the program's last
    conflicts: tuple[str, ...] = ()  # lower-precedence sources that carried a different id
    priority: int | None = None  # X-Program-Priority: higher runs first within a class
    held_s: float | None = None  # X-ThunderAgent-Held-S: a router's move held it this long


def _label(source: str) -> str:
    kind, _, name = source.partition(":")
    if kind == "header":
        return "header " + "-".join(part.capitalize() for part in name.split("-"))
    return f"body field '{name}'"


def id_problem(value: Any) -> str | None:
    """What makes ``value`` an invalid program id ("got ..."), or None when it is valid.

    The one rule for every id source, route and client: 1-256 visible ASCII characters
    (0x21-0x7E), never stripped or rewritten. Such an id is a legal HTTP header value as is.
    """
    if not isinstance(value, str):
        return f"got {type(value).__name__}"
    if not value:
        return "got an empty string"
    if len(value) > MAX_ID_LENGTH:
        return f"got {len(value)} characters"
    bad = _NOT_VISIBLE_ASCII.search(value)
    if bad is not None:
        return f"got {bad.group()!r} at position {bad.start()}"
    return None


def invalid_id_message(what: str, problem: str) -> str:
    return (f"{what} must be a string of 1-{MAX_ID_LENGTH} visible ASCII characters "
            f"(0x21-0x7E: no spaces, control or non-ASCII characters), {problem}")


def check_program_id(value: Any, what: str = "program id") -> str:
    """``value`` when it is a valid program id, else InvalidProgramId naming ``what``."""
    problem = id_problem(value)
    if problem is not None:
        raise InvalidProgramId(what, invalid_id_message(what, problem))
    return value


def _check_id(source: str, value: Any) -> str:
    return check_program_id(value, _label(source))


def _lower_keys(headers: Mapping[Any, Any]) -> dict[str, Any]:
    out = {}
    for key, value in headers.items():
        key = key.decode("latin-1") if isinstance(key, bytes) else str(key)
        out[key.lower()] = value.decode("latin-1") if isinstance(value, bytes) else value
    return out


def _lookup(source: str, headers: dict[str, Any], body: Mapping[str, Any]) -> Any:
    kind, _, name = source.partition(":")
    if kind == "header":
        return headers.get(name.lower())
    if kind == "body" and name != _SGLANG_SESSION_FIELD:
        return body.get(name)  # JSON null reads as absent
    if kind == "body":
        raise ValueError(f"id source {source!r}: body 'session_id' is SGLang's own field, not a program id")
    raise ValueError(f"id source {source!r} must be 'header:NAME' or 'body:FIELD'")


def names_program(headers: Mapping[Any, Any], program_id: str,
                  sources: tuple[str, ...] = DEFAULT_ID_SOURCES) -> bool:
    """Whether a header id source of ``sources`` carries ``program_id`` (a client naming its
    own program, as on its calls). Claimed, not proven: ids are the program's credential."""
    hdrs = _lower_keys(headers)
    return any(_lookup(src, hdrs, {}) == program_id
               for src in sources if src.startswith("header:"))


def _final(headers: dict[str, Any], body: Mapping[str, Any]) -> bool:
    final = False
    for name in FINAL_HEADERS:
        raw = headers.get(name)
        if raw is None:
            continue
        value = raw.strip().lower() if isinstance(raw, str) else raw
        if value not in ("1", "true", "0", "false"):
            label = _label("header:" + name)
            raise InvalidFinalMarker(label, f"{label} must be 1, true, 0 or false, got {raw!r}")
        final = final or value in ("1", "true")
    raw = body.get(FINAL_BODY_FIELD)
    if raw is not None and not isinstance(raw, bool):
        label = _label("body:" + FINAL_BODY_FIELD)
        raise InvalidFinalMarker(label, f"{label} must be true or false, got {type(raw).__name__}")
    return final or raw is True


PRIORITY_HEADER = "x-program-priority"
_PRIORITY_RANGE = 1 << 31


def _priority(headers: dict[str, Any]) -> int | None:
    return _number_header(headers, PRIORITY_HEADER, "X-Program-Priority", int,
                          lambda v: -_PRIORITY_RANGE <= v < _PRIORITY_RANGE,
                          "an integer in [-2^31, 2^31)")


def _number_header(headers: dict[str, Any], key: str, label: str, parse, valid,
                   rule: str):
    """A header's number, or None when absent; a malformed mark (HTTP 400) otherwise."""
    raw = headers.get(key)
    if raw is None:
        return None
    try:
        value = parse(str(raw).strip())
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise InvalidFinalMarker(label, f"{label} must be {rule}, got {raw!r}")
    return value


HELD_HEADER = "x-thunderagent-held-s"
ADMIN_KEY_HEADER = "x-thunderagent-admin-key"
MAX_HELD_S = 86400.0


def _held_s(headers: dict[str, Any]) -> float | None:
    """``X-ThunderAgent-Held-S``: how long a router has held this call already (it was handed
    back by a replica its program moved off), counted toward ``--thunderagent-max-pause``
    here. Whether the sender may say so is the server's check (the admin key)."""
    return _number_header(headers, HELD_HEADER, "X-ThunderAgent-Held-S", float,
                          lambda v: 0.0 <= v <= MAX_HELD_S,  # NaN and infinities fail
                          f"a number of seconds in [0, {MAX_HELD_S:g}]")


def extract_identity(
    headers: Mapping[str, str], body: Mapping[str, Any] | None, sources: tuple[str, ...] = DEFAULT_ID_SOURCES
) -> Identity:
    """Read a request's program identity; raise InvalidProgramId/InvalidFinalMarker on bad marks
    (a bad X-Program-Priority or X-ThunderAgent-Held-S raises InvalidFinalMarker too: a
    malformed mark, HTTP 400).

    The first present source in ``sources`` wins; every present source is validated, and lower
    ones carrying a different id are listed in ``conflicts``. Header names match case-insensitively.
    """
    hdrs = _lower_keys(headers)
    body = body if isinstance(body, Mapping) else {}
    found = [(src, _check_id(src, v)) for src in sources if (v := _lookup(src, hdrs, body)) is not None]
    parents = [_check_id("header:" + h, hdrs[h]) for h in PARENT_HEADERS if hdrs.get(h) is not None]
    final = _final(hdrs, body)
    priority = _priority(hdrs)
    held_s = _held_s(hdrs)
    parent = parents[0] if parents else None
    if not found:
        return Identity(None, None, parent, final, (), priority)
    (source, program_id), rest = found[0], found[1:]
    conflicts = tuple(src for src, value in rest if value != program_id)
    return Identity(program_id, source, parent, final, conflicts, priority, held_s)


def _parse_source(item: str) -> str:
    kind, colon, name = (part.strip() for part in item.partition(":"))
    if not colon:
        alias = item.lower()
        if alias == _SGLANG_SESSION_FIELD:
            return "body:" + alias  # rejected by the caller with the clear message
        if alias not in _SHORT_ALIASES:
            known = ", ".join(_SHORT_ALIASES)
            raise ValueError(f"unknown id source {item!r}: use header:NAME, body:FIELD or one of {known}")
        return _SHORT_ALIASES[alias]
    if kind.lower() == "header" and _HEADER_NAME.match(name.lower()):
        return "header:" + name.lower()
    if kind.lower() == "body" and _BODY_FIELD.match(name):
        return "body:" + name
    raise ValueError(f"id source {item!r} must be 'header:NAME' or 'body:FIELD'")


def parse_id_sources(text: str) -> tuple[str, ...]:
    """Parse --thunderagent-id-sources: comma-separated 'header:NAME', 'body:FIELD' or short aliases.

    Short aliases are the default sources' names without their prefix ("x-program-id",
    "program_id", "job_id", "session-id", ...). Raises ValueError on an empty list, an unknown
    alias, a malformed entry, a duplicate, or 'body:session_id' (SGLang's own field).
    """
    out: list[str] = []
    for source in (_parse_source(part.strip()) for part in text.split(",") if part.strip()):
        if source == "body:" + _SGLANG_SESSION_FIELD:
            raise ValueError("id source 'body:session_id' is SGLang's own session field, never a program id")
        if source in out:
            raise ValueError(f"id source {source!r} is listed twice")
        out.append(source)
    if not out:
        raise ValueError("--thunderagent-id-sources needs at least one source, e.g. 'x-program-id,program_id'")
    return tuple(out)
