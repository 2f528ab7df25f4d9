"""Sending one call to one replica and reading the start of its answer.

``send`` returns an ``Upstream``: the replica's status and headers, the first bytes of its
body (a streamed answer's first event), and the rest to stream on. It tells apart:
- a call the replica handed back unstarted because its program moved (421 with our marker,
  or a streamed first event carrying it): send it again elsewhere;
- a connect failure (nothing was sent): may be retried once on another replica;
- a failure after the call was sent: a 502 naming the replica, never retried.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

MIGRATED_MARKER = b"thunderagent: migrated:"
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade", "content-length",
                        "host"})
FIRST_EVENT_LIMIT = 1 << 16


class ConnectFailed(Exception):
    """Nothing reached the replica."""


class UpstreamFailed(Exception):
    """The replica failed after the call was sent (or while answering)."""


@dataclass
class Upstream:
    replica: str
    response: httpx.Response
    head: bytes  # the body's first bytes (a whole body when it was not streamed)
    migrated: bool

    @property
    def status(self) -> int:
        return self.response.status_code

    def headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.response.headers.multi_items()
                if k.lower() not in HOP_BY_HOP and k.lower() not in ("date", "server")]

    async def rest(self):
        """The body after ``head``; a failure mid-way raises UpstreamFailed."""
        try:
            async for chunk in self._chunks:
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"{type(exc).__name__}: {exc}") from None
        finally:
            await self.response.aclose()

    async def close(self) -> None:
        await self.response.aclose()


def request_headers(headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP
            and k.lower() != "accept-encoding"}


async def send(client: httpx.AsyncClient, replica: str, method: str, path: str, query: bytes,
               headers: dict[str, str], body: bytes) -> Upstream:
    url = f"{replica}{path}" + (f"?{query.decode('latin-1')}" if query else "")
    request = client.build_request(method, url, headers=headers, content=body)
    try:
        response = await client.send(request, stream=True)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise ConnectFailed(f"{type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        raise UpstreamFailed(f"{type(exc).__name__}: {exc}") from None
    chunks = response.aiter_raw()
    try:
        head = await _head(response, chunks)
    except httpx.HTTPError as exc:
        await response.aclose()
        raise UpstreamFailed(f"{type(exc).__name__}: {exc}") from None
    streamed = response.headers.get("content-type", "").startswith("text/event-stream")
    migrated = MIGRATED_MARKER in head and (streamed or response.status_code == 421)
    upstream = Upstream(replica, response, head, migrated=migrated)
    upstream._chunks = chunks
    return upstream


# Events a stream may open with before any output (chat's role chunk; Anthropic's and the
# Responses API's opening events): the router reads past them before it commits to a replica,
# since a call handed back unstarted sends its error right after them.
PREAMBLES = (b'"role":"assistant"', b"message_start", b"content_block_start", b"ping",
             b"response.created", b"response.in_progress", b"response.output_item.added",
             b"response.content_part.added")
MAX_PREAMBLE_EVENTS = 8


async def _head(response: httpx.Response, chunks) -> bytes:
    """A whole body unless it is streamed; a stream's opening events up to the first that is
    not a preamble (or the marker, or 64 KiB)."""
    streamed = response.headers.get("content-type", "").startswith("text/event-stream")
    buffer = b""
    async for chunk in chunks:
        buffer += chunk
        if streamed and _head_complete(buffer):
            break
    return buffer


def _head_complete(buffer: bytes) -> bool:
    if MIGRATED_MARKER in buffer or len(buffer) >= FIRST_EVENT_LIMIT:
        return True
    events = buffer.split(b"\n\n")[:-1]  # whole events only
    if not events:
        return False
    return len(events) >= MAX_PREAMBLE_EVENTS or not any(p in events[-1] for p in PREAMBLES)
