"""Replicas registered, moved and removed at run time (PUT/DELETE /router/backends/NAME):
the router's admin key, bad input, and what a move or removal does to placed programs."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from thunderagent_sglang.router.app import build_app
from thunderagent_sglang.router.core import Router
from thunderagent_sglang.router.settings import from_args

ADMIN = {"Authorization": "Bearer adm"}


@pytest.fixture
def router():
    return Router(from_args(["--backends", "a=http://10.0.0.1:30000", "--admin-api-key", "adm",
                             "--api-key", "client"]))


@pytest.fixture
def client(router):
    return TestClient(build_app(router))  # no lifespan: nothing is polled


def test_a_replica_registers_and_moves_and_its_old_urls_programs_are_lost(router, client):
    router.state.placement.update({"p1": "http://10.0.0.1:30000", "p2": "http://10.0.0.1:30000"})
    router.fleet.replicas["http://10.0.0.1:30000"].ready = True
    added = client.put("/router/backends/b", json={"url": "http://10.0.0.2:30000/"},
                       headers=ADMIN)
    assert (added.status_code, added.json()) == (200, {"name": "b", "url": "http://10.0.0.2:30000",
                                                       "replaced": None})
    same = client.put("/router/backends/a", json={"url": "http://10.0.0.1:30000"}, headers=ADMIN)
    assert same.json()["replaced"] is None and router.state.placement["p1"] == \
        "http://10.0.0.1:30000"  # the same URL again: nothing changes
    moved = client.put("/router/backends/a", json={"url": "http://10.0.0.3:30001"},
                       headers=ADMIN)
    assert moved.json()["replaced"] == "http://10.0.0.1:30000"
    assert router.fleet.names == {"a": "http://10.0.0.3:30001", "b": "http://10.0.0.2:30000"}
    assert set(router.fleet.replicas) == {"http://10.0.0.3:30001", "http://10.0.0.2:30000"}
    assert (router.state.placement, dict(router.state.lost)) == (
        {}, {"p1": "http://10.0.0.1:30000", "p2": "http://10.0.0.1:30000"})
    status = client.get("/router/replicas", headers={"Authorization": "Bearer client"}).json()
    assert sorted((r["name"], r["replica"], r["ready"]) for r in status["replicas"]) == [
        ("a", "http://10.0.0.3:30001", False), ("b", "http://10.0.0.2:30000", False)]
    removed = client.delete("/router/backends/b", headers=ADMIN)
    assert removed.json() == {"name": "b", "url": "http://10.0.0.2:30000", "removed": True}
    assert client.delete("/router/backends/b", headers=ADMIN).status_code == 404
    assert list(router.fleet.names) == ["a"]


@pytest.mark.parametrize("name,body,status", [
    ("b", {"url": "ftp://x:1"}, 400),
    ("b", {"url": "http://h:1?k=v"}, 400),
    ("b", {"url": 5}, 400),
    ("b", ["http://h:1"], 400),
    ("b", None, 400),
    ("a%20b", {"url": "http://h:1"}, 400),
    ("x" * 65, {"url": "http://h:1"}, 400),
    ("c", {"url": "http://10.0.0.1:30000"}, 409),  # a's URL under another name
])
def test_bad_registrations_are_refused_and_change_nothing(router, client, name, body, status):
    response = client.put(f"/router/backends/{name}", json=body, headers=ADMIN)
    assert response.status_code == status and response.json()["error"]["code"] == status
    assert router.fleet.names == {"a": "http://10.0.0.1:30000"}


def test_a_body_that_is_not_json_is_a_400(router, client):
    response = client.put("/router/backends/b", content=b"{nope", headers=ADMIN)
    assert response.status_code == 400 and list(router.fleet.names) == ["a"]


def test_registration_needs_the_admin_key_not_the_client_key(router, client):
    for headers in ({}, {"Authorization": "Bearer client"}, {"x-api-key": "adm"}):
        response = client.put("/router/backends/b", json={"url": "http://h:1"}, headers=headers)
        assert response.status_code == 401
        assert client.delete("/router/backends/a", headers=headers).status_code == 401
    assert list(router.fleet.names) == ["a"]


def test_without_an_admin_key_registration_is_off():
    router = Router(from_args(["--backends", "http://10.0.0.1:30000"]))
    client = TestClient(build_app(router))
    response = client.put("/router/backends/b", json={"url": "http://h:1"}, headers=ADMIN)
    assert response.status_code == 403 and "--admin-api-key" in response.json()["error"][
        "message"]
    assert router.fleet.names == {"backend-0": "http://10.0.0.1:30000"}


def _fleet_of_two(dead_is_gone: bool):
    """A router whose replica A drops every call unanswered, and B answers; ``gone`` says
    whether A then refuses connections."""
    import httpx

    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.host)
        if request.url.host == "a":
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, headers={"content-type": "application/json"},
                              stream=httpx.ByteStream(b'{"text": "from b"}'))

    settings = from_args(["--backends", "a=http://a:1,b=http://b:1"])
    router = Router(settings, client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    for replica in router.fleet.replicas.values():
        replica.ready = True
        replica.view = {"scheduler": {"capacity_tokens": 1000, "high_tokens": 900,
                                      "low_tokens": 800, "footprint_tokens": 0}}
    router.state.placement["p"] = "http://a:1"

    async def gone(replica):
        return dead_is_gone
    router.gone = gone
    return router, sent


def test_a_call_whose_replica_died_before_answering_is_sent_once_more_elsewhere():
    router, sent = _fleet_of_two(dead_is_gone=True)
    response = TestClient(build_app(router)).post(
        "/generate", json={"text": "hi"}, headers={"X-Program-Id": "p"})
    assert (response.status_code, response.json(), sent) == (200, {"text": "from b"},
                                                             ["a", "b"])
    assert router.state.counters["resent_after_failure"] == 1
    assert router.state.placement["p"] == "http://b:1" and router.state.lost["p"] == "http://a:1"
    assert not router.fleet.replicas["http://a:1"].ready


def test_a_call_whose_replica_failed_but_still_listens_is_a_502_not_resent():
    router, sent = _fleet_of_two(dead_is_gone=False)
    response = TestClient(build_app(router)).post(
        "/generate", json={"text": "hi"}, headers={"X-Program-Id": "p"})
    assert response.status_code == 502 and sent == ["a"]
    assert "it was not retried" in response.json()["error"]["message"]
    assert router.state.counters["failed_upstream"] == 1


def test_gone_means_refusing_connections_within_the_watch():
    import asyncio
    import socket

    from thunderagent_sglang.router.replicas import Replica

    router = Router(from_args(["--backends", "http://127.0.0.1:1"]))

    async def probe():
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        alive = await router.gone(Replica(url), within_s=0.3)
        asyncio.get_running_loop().call_later(0.4, listener.close)  # dies a moment later
        dying = await router.gone(Replica(url), within_s=2.0)
        dead = await router.gone(Replica(url), within_s=0.0)
        return alive, dying, dead

    assert asyncio.run(probe()) == (False, True, True)


def empty_a_and_full_b():
    """A router over two ready replicas: a empty, b at its high watermark (900 of 1000)."""
    router = Router(from_args(["--backends", "a=http://a:1,b=http://b:1"]))
    a, b = router.fleet.replicas["http://a:1"], router.fleet.replicas["http://b:1"]
    for replica, footprint in ((a, 0), (b, 900)):
        replica.ready = True
        replica.view = {"scheduler": {"capacity_tokens": 1000, "high_tokens": 900,
                                      "low_tokens": 800, "footprint_tokens": footprint}}
    return router, a, b


def test_a_program_moved_here_is_not_moved_again_before_a_call_ran_here():
    """Two replicas that fill in turn passed one program back and forth until its call got
    a 502 (three hand-backs, seen in a fleet benchmark): a moved program waits on its new
    replica until one call has run there."""
    import asyncio

    router, a, b = empty_a_and_full_b()
    moved = []

    async def move(m):
        moved.append((m.program_id, m.source, m.target))
    router.move = move
    router.state.placement["p"] = b.url
    router.state.moved["p"] = a.url  # it came from a
    waiting = {"status": "waiting", "waiting": 1, "context_tokens": 300}
    b.records = {"p": dict(waiting)}  # held on b, nothing run there: it stays
    router.state.waiting_since["p"] = router.clock() - 5
    asyncio.run(router.placement_round())
    assert moved == []
    assert "p" not in router.state.waiting_since  # its wait counts once it may move
    b.records = {"p": {**waiting, "status": "paused", "steps": 1}}  # it ran here since
    router.state.waiting_since["p"] = router.clock() - 5
    asyncio.run(router.placement_round())
    assert moved == [("p", b.url, a.url)]


def test_a_stray_is_ended_in_the_background_once_and_the_round_does_not_wait_for_it():
    """A program listed on a replica it is not placed on (a poll taken before its move) is
    ended there; a busy replica can take seconds to answer, and meanwhile the round goes on
    (here: a waiting program on the other replica is moved) and starts no second end."""
    import asyncio

    router, a, b = empty_a_and_full_b()
    ended, moved, answer = [], [], None

    async def migrate_call(url, pid):
        ended.append((url, pid))
        await answer.wait()  # the replica is busy
        return None

    async def move(m):
        moved.append((m.program_id, m.source, m.target))

    async def rounds():
        nonlocal answer
        answer = asyncio.Event()
        router._migrate_call, router.move = migrate_call, move
        router.state.placement.update({"s": a.url, "w": b.url})
        a.records = {"s": {"status": "active"}}
        b.records = {"s": {"status": "active"},  # stale: s moved to a
                     "w": {"status": "waiting", "waiting": 1, "context_tokens": 300,
                           "steps": 1}}
        router.state.waiting_since["w"] = router.clock() - 5
        await asyncio.wait_for(router.placement_round(), 1.0)
        await asyncio.wait_for(router.placement_round(), 1.0)  # the end is still in flight
        await asyncio.sleep(0)
        pending = len(router._ending)
        answer.set()
        await asyncio.sleep(0.05)
        return pending

    assert asyncio.run(rounds()) == 1
    assert ended == [(b.url, "s")] and router._ending == {}
    assert moved[0] == ("w", b.url, a.url)


def test_a_release_re_reads_its_replica_but_waits_for_a_busy_one_at_most_the_bound():
    """After a release the router polls that replica before answering; a replica that does
    not answer within the bound is re-read in the background, and stopping cancels that."""
    import asyncio

    router, a, b = empty_a_and_full_b()
    polled, answer = [], None

    async def poll_once(replica):
        polled.append(replica.url)
        if replica is b:
            await answer.wait()  # b is busy
        replica.view = {**replica.view, "scheduler": {**replica.view["scheduler"],
                                                      "footprint_tokens": 0}}

    async def run():
        nonlocal answer
        answer = asyncio.Event()
        router.fleet.poll_once = poll_once
        await asyncio.wait_for(router.refresh(a, wait_s=0.2), 1.0)
        fresh_a = a.load().free_tokens
        started = router.clock()
        await asyncio.wait_for(router.refresh(b, wait_s=0.2), 1.0)
        waited, left = router.clock() - started, len(router._background)
        stale_b = b.load().free_tokens
        await router.stop()
        await asyncio.sleep(0.05)  # the cancelled poll unwinds
        return fresh_a, waited, left, stale_b, len(router._background)

    fresh_a, waited, left, stale_b, after_stop = asyncio.run(run())
    assert polled == [a.url, b.url] and fresh_a == 800
    assert 0.2 <= waited < 0.5 and left == 1 and stale_b == 800 - 900
    assert after_stop == 0
