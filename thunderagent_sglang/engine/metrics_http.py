"""``GET /metrics``: SGLang's own series (with ``--enable-metrics``) plus ours.

An ASGI middleware lets SGLang answer first, then appends the ``thunderagent_``
series read from the scheduler's program table; without ``--enable-metrics``
(SGLang answers 404) it serves ours alone.
"""

from __future__ import annotations

from thunderagent_sglang.program.metrics import render

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
PATHS = ("/metrics", "/metrics/")


class MetricsMiddleware:
    def __init__(self, app, fetch_stats):
        self.app = app
        self.fetch_stats = fetch_stats  # async () -> (HTTP status, body dict)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "GET" or scope["path"] not in PATHS:
            return await self.app(scope, receive, send)
        # Ask for plain text: prometheus_client gzips when asked, and ours is appended.
        scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                      if k.lower() != b"accept-encoding"]}
        status, headers, body = await _capture(self.app, scope, receive)
        if 300 <= status < 400:  # SGLang's mounted metrics app redirects /metrics to /metrics/
            return await _replay(send, status, headers, body)
        stats_status, stats_body = await self.fetch_stats()
        ours = render(stats_body) if stats_status == 200 else b""
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
