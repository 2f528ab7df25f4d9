"""``GET /thunderagent/view``: the live view of programs (``view/index.html`` and
``view/view.js``, served as they are: no build step, no outside asset).

An ASGI middleware serves the two files; it sits outside SGLang's API-key middleware (added
again right after SGLang adds that one), so a browser can load the page without sending a
key. The page holds no data: it asks for the key and sends it, as a bearer token, with its
reads of ``/programs`` and ``/programs/events``. A strict Content-Security-Policy allows only
the server's own script and connections.
"""

from __future__ import annotations

from pathlib import Path

VIEW_DIR = Path(__file__).resolve().parents[1] / "view"
PAGE_PATH = "/thunderagent/view"
CSP = ("default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
FILES = {PAGE_PATH: ("index.html", b"text/html; charset=utf-8"),
         PAGE_PATH + "/": ("index.html", b"text/html; charset=utf-8"),
         PAGE_PATH + ".js": ("view.js", b"text/javascript; charset=utf-8")}


class ViewPage:
    def __init__(self, app):
        self.app = app
        self.bodies = {path: (VIEW_DIR / name).read_bytes() for path, (name, _) in FILES.items()}

    async def __call__(self, scope, receive, send):
        path = scope.get("path")
        if scope["type"] != "http" or path not in FILES:
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await _answer(send, 405, b"text/plain", b"GET only\n", [(b"allow", b"GET")])
        body = self.bodies[path]
        await _answer(send, 200, FILES[path][1], body if scope["method"] == "GET" else b"",
                      [(b"content-security-policy", CSP.encode()),
                       (b"x-content-type-options", b"nosniff"),
                       (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-cache")],
                      length=len(body))


async def _answer(send, status: int, content_type: bytes, body: bytes, extra, length=None):
    headers = [(b"content-type", content_type),
               (b"content-length", str(len(body) if length is None else length).encode()),
               *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def outside_api_key(result, app, **kwargs):
    """AFTER SGLang's ``add_api_key_middleware``: the page stays reachable without a key."""
    app.add_middleware(ViewPage)
    return result
