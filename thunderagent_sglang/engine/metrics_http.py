"""``GET /metrics``: SGLang's own series (with ``--enable-metrics``) plus ours.

An ASGI middleware lets SGLang answer first, then appends the ``thunderagent_``
series read from the scheduler's program table; without ``--enable-metrics``
(SGLang answers 404) it serves ours alone.

The scheduler answers between batches, and one CPU prefill can take seconds: a scrape never
waits more than ``STATS_WAIT_S`` for it. It then gets the scheduler's last answer, and
``thunderagent_stats_age_seconds`` says how old that is. One request is in flight at a time,
shared by concurrent scrapes (SGLang's communicator must never see a cancelled call: its
reply would be taken by the next caller).
"""

from __future__ import annotations

import asyncio
import time

from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.program.metrics import render, render_age

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
PATHS = ("/metrics", "/metrics/")


STATS_WAIT_S = 2.0


class LatestStats:
    """The scheduler's stats for a scrape: awaited up to ``wait_s``, else the last answer."""

    def __init__(self, fetch, wait_s: float = STATS_WAIT_S, clock=time.monotonic):
        self.fetch = fetch  # async () -> (HTTP status, body dict)
        self.wait_s = wait_s
        self.clock = clock
        self.body: dict | None = None
        self.answered_at = 0.0
        self.pending: asyncio.Future | None = None

    async def get(self) -> tuple[dict | None, float]:
        """(the latest stats or None before the first answer, their age in seconds)."""
        if self.pending is None or self.pending.done():
            self.pending = asyncio.ensure_future(self._refresh())
        try:
            await asyncio.wait_for(asyncio.shield(self.pending), self.wait_s)
        except asyncio.TimeoutError:
            pass
        return self.body, (self.clock() - self.answered_at) if self.body is not None else 0.0

    async def _refresh(self) -> None:
        try:
            status, body = await self.fetch()
        except Exception as exc:  # noqa: BLE001 - a scrape shows the last stats instead
            get_logger().warning("/metrics: the scheduler's stats failed (%s); serving the "
                                 "last ones", exc)
            return
        if status == 200:
            self.body, self.answered_at = body, self.clock()


class MetricsMiddleware:
    def __init__(self, app, fetch_stats):
        self.app = app
        self.stats = LatestStats(fetch_stats)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PATHS:
            return await self.app(scope, receive, send)
        # Ask for plain text: prometheus_client gzips when asked, and ours is appended.
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                      if k.lower() != b"accept-encoding"]}
        status, headers, body = await _capture(self.app, scope, receive)
        if 300 <= status < 400:  # SGLang's mounted metrics app redirects /metrics to /metrics/
            return await _replay(send, status, headers, body)
        body_stats, age_s = await self.stats.get()
        ours = render(body_stats) + render_age(age_s) if body_stats is not None else b""
        if status == 404:
            status, headers, body = 200, [(b"content-type", CONTENT_TYPE)], b""
        await _replay(send, status, *_appended(headers, body, ours))


class AppendMetrics:
    """Appends ``text()`` (Prometheus text of this process, e.g. the launcher's sidecar
    restarts) to a successful ``GET /metrics``; sits outside ``MetricsMiddleware``."""

    def __init__(self, app, text):
        self.app = app
        self.text = text  # () -> bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PATHS:
            return await self.app(scope, receive, send)
        status, headers, body = await _capture(self.app, scope, receive)
        if status == 200:
            headers, body = _appended(headers, body, self.text())
        await _replay(send, status, headers, body)


def _appended(headers, body: bytes, more: bytes):
    """(headers, body) with ``more`` appended on a line of its own, content-length updated."""
    body = body + (b"\n" if body and not body.endswith(b"\n") else b"") + more
    headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
    headers.append((b"content-length", str(len(body)).encode()))
    return headers, body


async def _replay(send, status, headers, body) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _capture(app, scope, receive):
    start: dict = {}
    chunks: list[bytes] = []

    async def capture(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, capture)
    return start.get("status", 500), list(start.get("headers", [])), b"".join(chunks)
