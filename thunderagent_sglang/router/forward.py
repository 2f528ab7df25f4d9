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
    scan = HeadScan()
    async for chunk in chunks:
        if scan.add(chunk) and streamed:
            break
    return bytes(scan.buffer)


class HeadScan:
    """A stream's head read chunk by chunk; each byte is scanned once (the marker's search
    overlaps the last chunk by its length), each event when it completes."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self._scanned = 0  # the start of the first event not complete yet
        self._events = 0
        self._done = False

    def add(self, chunk: bytes) -> bool:
        """Add a chunk; True once the head is complete: the marker, 64 KiB, a whole event
        that is not a preamble, or ``MAX_PREAMBLE_EVENTS`` of them."""
        overlap = max(0, len(self.buffer) - len(MIGRATED_MARKER) + 1)
        self.buffer += chunk
        if self._done:
            return True
        if MIGRATED_MARKER in self.buffer[overlap:] or len(self.buffer) >= FIRST_EVENT_LIMIT:
            self._done = True
            return True
        while not self._done:
            end = self.buffer.find(b"\n\n", self._scanned)
            if end < 0:
                break
            event = self.buffer[self._scanned:end]
            self._scanned, self._events = end + 2, self._events + 1
            self._done = (self._events >= MAX_PREAMBLE_EVENTS
                          or not any(p in event for p in PREAMBLES))
        return self._done
