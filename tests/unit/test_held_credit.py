"""A call a router held before its program moved: the replica counts that wait only when the
router may say so (the admin key), and the router replaces any client-sent value."""

from __future__ import annotations

import asyncio

import pytest

program_http = pytest.importorskip("thunderagent_sglang.engine.program_http")
from thunderagent_sglang.router.calls import held_headers  # noqa: E402


def call(admin_key, headers):
    """One POST /generate through the identity middleware: (status, what reached the app)."""
    reached, sent = [], []

    async def app(scope, receive, send):
        reached.append(scope["state"][program_http.STATE_KEY])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    middleware = program_http.IdentityMiddleware(app, ("header:x-program-id",),
                                                 admin_key=lambda: admin_key)
    scope = {"type": "http", "method": "POST", "path": "/generate",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(middleware(scope, receive, send))
    return sent[0]["status"], reached, sent


def test_with_the_admin_key_the_wait_reaches_the_call():
    status, reached, _ = call("k3y", {"x-program-id": "p", "x-thunderagent-held-s": "40",
                                      "x-thunderagent-admin-key": "k3y"})
    assert status == 200 and reached[0].held_s == 40.0


@pytest.mark.parametrize("given", [None, "wrong"])
def test_without_the_admin_key_a_claimed_wait_is_403_and_nothing_runs(given):
    headers = {"x-program-id": "p", "x-thunderagent-held-s": "40"}
    if given is not None:
        headers["x-thunderagent-admin-key"] = given
    status, reached, sent = call("k3y", headers)
    assert status == 403 and reached == []
    assert b"X-ThunderAgent-Admin-Key" in sent[1]["body"]


def test_a_server_without_an_admin_key_takes_the_wait_from_any_caller():
    status, reached, _ = call(None, {"x-program-id": "p", "x-thunderagent-held-s": "7"})
    assert status == 200 and reached[0].held_s == 7.0


def test_the_router_replaces_client_values_and_adds_its_key():
    client = {"x-program-id": "p", "X-ThunderAgent-Held-S": "9999",
              "x-thunderagent-admin-key": "guess"}
    assert held_headers(client, 12.34567, "k3y") == {
        "x-program-id": "p", "x-thunderagent-held-s": "12.346",
        "x-thunderagent-admin-key": "k3y"}
    assert held_headers({"x-program-id": "p"}, -1.0, None) == {
        "x-program-id": "p", "x-thunderagent-held-s": "0.000"}
