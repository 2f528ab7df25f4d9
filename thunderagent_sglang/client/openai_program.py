"""Tag an OpenAI client's calls as one LLM program.

    client = openai.OpenAI(base_url="http://127.0.0.1:30000/v1", api_key="sk-...")
    with Program(client, "agent-7") as program:
        program.client.chat.completions.create(model=..., messages=...)
        ...
        program.client.chat.completions.create(..., extra_headers=program.final_call_headers())
    # released on exit (a 404 because the final marker already ended it is fine)

`Program.client` is a copy of the given client (``client.with_options(default_headers=...)``)
whose every request carries ``X-Program-Id`` (and ``x-parent-session-id`` when a parent is
given); the given client is left untouched. ``release()`` posts ``{"program_id": id}`` to
``/programs/release`` on the same server (the base URL without its ``/v1``), with the client's
API key as a Bearer token.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx

from thunderagent_sglang.program import identity

logger = logging.getLogger(__name__)

PROGRAM_ID_HEADER = "X-Program-Id"
PARENT_ID_HEADER = "x-parent-session-id"
FINAL_HEADER = "X-Program-Final"
RELEASE_PATH = "/programs/release"
RELEASE_TIMEOUT_S = 30.0


def check_program_id(value: Any, what: str = "program_id") -> str:
    """Return value when it is a valid id, by the server's own rule (1-256 visible ASCII)."""
    return identity.check_program_id(value, what)


def new_program_id() -> str:
    return uuid.uuid4().hex


def program_headers(program_id: str, parent_id: str | None = None) -> dict[str, str]:
    """The headers that tag a request as belonging to program_id."""
    headers = {PROGRAM_ID_HEADER: program_id}
    if parent_id is not None:
        headers[PARENT_ID_HEADER] = parent_id
    return headers


def server_root(base_url: Any) -> str:
    """The server's root URL from an OpenAI base URL: strip a trailing '/' and '/v1'."""
    root = str(base_url).rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


def _release_request(root: str, program_id: str, api_key: str | None) -> tuple[str, dict, dict]:
    # Its own id header: with an admin key set, the server ends only the caller's own program.
    headers = {"Content-Type": "application/json", "X-Program-Id": program_id}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return root.rstrip("/") + RELEASE_PATH, {"program_id": program_id}, headers


def _release_result(response: httpx.Response, url: str, program_id: str) -> dict | None:
    if response.status_code == 404:
        return None  # already ended (a final marker, idle expiry, or a release elsewhere)
    if response.status_code != 200:
        raise RuntimeError(f"releasing program {program_id!r} failed: POST {url} returned "
                           f"HTTP {response.status_code}: {response.text}")
    try:
        return response.json()
    except ValueError as exc:
        raise RuntimeError(f"releasing program {program_id!r}: POST {url} returned HTTP 200 "
                           f"with a body that is not JSON: {response.text!r}") from exc


def release_program(root: str, program_id: str, api_key: str | None = None,
                    timeout: float = RELEASE_TIMEOUT_S) -> dict | None:
    """POST /programs/release; the record, or None when the server no longer knows the program (404)."""
    url, body, headers = _release_request(root, program_id, api_key)
    try:
        response = httpx.post(url, json=body, headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"releasing program {program_id!r}: POST {url} failed: {exc!r}") from exc
    return _release_result(response, url, program_id)


async def release_program_async(root: str, program_id: str, api_key: str | None = None,
                                timeout: float = RELEASE_TIMEOUT_S) -> dict | None:
    """The async form of release_program."""
    url, body, headers = _release_request(root, program_id, api_key)
    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.post(url, json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"releasing program {program_id!r}: POST {url} failed: {exc!r}") from exc
    return _release_result(response, url, program_id)


def release_on_exit(handle, exc_type) -> None:
    """``handle.release()`` at the end of a ``with`` block, never masking the block's exception."""
    if exc_type is None:
        handle.release()
        return
    try:
        handle.release()
    except Exception:  # noqa: BLE001
        logger.warning("could not release program %r after an error", handle.program_id, exc_info=True)


class _ProgramBase:
    def __init__(self, client: Any, program_id: str | None = None, *, parent_id: str | None = None):
        self.program_id: str = new_program_id() if program_id is None else check_program_id(program_id)
        self.parent_id: str | None = None if parent_id is None else check_program_id(parent_id, "parent_id")
        self.client = client.with_options(default_headers=program_headers(self.program_id, self.parent_id))
        self.released = False

    @staticmethod
    def final_call_headers() -> dict[str, str]:
        """Pass as extra_headers on the program's last call: the server ends the program after it."""
        return {FINAL_HEADER: "1"}

    @property
    def server_url(self) -> str:
        return server_root(self.client.base_url)

    def _api_key(self) -> str | None:
        return getattr(self.client, "api_key", None) or None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(program_id={self.program_id!r}, released={self.released})"


class Program(_ProgramBase):
    """An LLM program seen from the client: `client` tags every call with the program id."""

    def release(self) -> dict | None:
        """End the program on the server; its record, or None if already ended (404 or released before)."""
        if self.released:
            return None
        record = release_program(self.server_url, self.program_id, self._api_key())
        self.released = True
        return record

    def __enter__(self) -> Program:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        release_on_exit(self, exc_type)


class AsyncProgram(_ProgramBase):
    """Program for openai.AsyncOpenAI: `await release()`, `async with`."""

    async def release(self) -> dict | None:
        if self.released:
            return None
        record = await release_program_async(self.server_url, self.program_id, self._api_key())
        self.released = True
        return record

    async def __aenter__(self) -> AsyncProgram:
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            await self.release()
            return
        try:
            await self.release()
        except Exception:  # noqa: BLE001
            logger.warning("could not release program %r after an error", self.program_id, exc_info=True)
