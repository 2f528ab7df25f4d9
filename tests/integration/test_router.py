"""The router in front of two real replicas (one shared fleet for every case): placement,
stickiness, a waiting program moved to the replica with room (released on the old one), the
union of /programs, untagged calls never held, the server's answers to bad input, and a killed
replica taken out, its unanswered call sent once to the other and its programs placed again
(the last case)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.integration.router_process import RouterProcess
from tests.integration.server import REPO, Server, free_port, wait_until

# The replicas share a KV storage tier (SGLang's HiCache file backend on one directory): a
# program moved to the other replica finds the KV it computed on its first in storage.
STORAGE = ["--page-size", "16", "--enable-hierarchical-cache", "--hicache-io-backend", "direct",
           "--hicache-mem-layout", "layer_first", "--hicache-write-policy", "write_through",
           "--hicache-storage-backend", "file", "--hicache-storage-prefetch-policy",
           "wait_complete"]
REPLICA_ARGS = ["--max-total-tokens", "2048", "--thunderagent-max-pause", "120", *STORAGE]
FILLER = [i % 1900 + 50 for i in range(300)]  # with 1600 outputs, most of a 2048-token pool


@dataclass
class Fleet:
    a: Server
    b: Server
    router: RouterProcess
    logs: Path

    def replica(self, url: str) -> Server:
        return self.a if url == self.a.url else self.b

    def other(self, url: str) -> Server:
        return self.b if url == self.a.url else self.a


@pytest.fixture(scope="module")
def fleet(request, tmp_path_factory):
    logs = tmp_path_factory.mktemp("router")
    env = {"SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": str(logs / "kv-storage")}
    a = Server("replica-a", REPLICA_ARGS, env, logs)
    b = Server("replica-b", REPLICA_ARGS, env, logs)
    request.addfinalizer(a.stop)
    request.addfinalizer(b.stop)
    a.wait_ready(), b.wait_ready()
    router = RouterProcess([a.url, b.url], logs, "--kv-storage-rate", "8000")
    request.addfinalizer(router.stop)
    return Fleet(a, b, router.wait_ready(2), logs)


def generate(url, pid, ids, n=4, stream=False, timeout=120, **headers):
    if pid is not None:
        headers["X-Program-Id"] = pid
    return requests.post(f"{url}/generate", headers=headers, timeout=timeout, stream=stream,
                         json={"input_ids": ids, "stream": stream,
                               "sampling_params": {"max_new_tokens": n, "ignore_eos": True,
                                                   "temperature": 0}})


def chat(url, pid, text, n=4, stream=False):
    return requests.post(f"{url}/v1/chat/completions", headers={"X-Program-Id": pid},
                         timeout=120, stream=stream, json={
                             "model": "default", "messages": [{"role": "user", "content": text}],
                             "max_tokens": n, "stream": stream})


def record(url, pid) -> dict:
    return requests.get(f"{url}/programs/{pid}", timeout=10).json()


def release_all(fleet, pids):
    for pid in pids:
        requests.post(f"{fleet.router.url}/programs/release", json={"program_id": pid},
                      timeout=10)


def test_programs_spread_over_the_replicas_and_each_stays_on_its_own(fleet):
    pids = [f"spread-{i}" for i in range(6)]
    for turn in range(2):
        for i, pid in enumerate(pids):
            ids = [10 + i] * 40 + list(range(100, 100 + 20 * (turn + 1)))
            response = generate(fleet.router.url, pid, ids)
            assert response.status_code == 200, response.text
            assert response.headers["x-program-id"] == pid
    homes = {pid: record(fleet.router.url, pid)["replica"] for pid in pids}
    assert sorted(homes.values()).count(fleet.a.url) == 3  # a burst alternates
    for pid, home in homes.items():
        assert record(home, pid)["steps"] == 2  # both calls on one replica
        assert requests.get(f"{fleet.other(home).url}/programs/{pid}").status_code == 404
    release_all(fleet, pids)


def test_the_routers_programs_are_the_union_of_the_replicas(fleet):
    for pid in ("union-1", "union-2", "union-3"):
        assert generate(fleet.router.url, pid, [7] * 30).status_code == 200
    merged = requests.get(f"{fleet.router.url}/programs", timeout=10).json()
    expected = set()
    for server in (fleet.a, fleet.b):
        for rec in requests.get(f"{server.url}/programs", timeout=10).json()["programs"]:
            expected.add((rec["program_id"], rec["incarnation"], rec["status"], server.url))
    assert {(r["program_id"], r["incarnation"], r["status"], r["replica"])
            for r in merged["programs"]} == expected
    assert [r["replica"] for r in merged["replicas"]] == [fleet.a.url, fleet.b.url]
    release_all(fleet, ["union-1", "union-2", "union-3"])
    # each release refreshed its replica's view: at once, nothing of them counts against room
    free = {r["replica"]: r["free_tokens"] for r in fleet.router.status()["replicas"]}
    assert free == {s.url: requests.get(f"{s.url}/programs").json()["scheduler"]["low_tokens"]
                    for s in (fleet.a, fleet.b)}


def held_counts(fleet) -> dict:
    return {s.url: requests.get(f"{s.url}/programs").json()["scheduler"] for s in (fleet.a,
                                                                                  fleet.b)}


@pytest.mark.parametrize("stream", [False, True], ids=["generate", "chat-stream"])
def test_a_waiting_program_moves_to_the_replica_with_room_and_ends_on_the_old_one(fleet,
                                                                                    stream):
    pid = f"mover-{stream}"
    first = chat(fleet.router.url, pid, "word " * 400) if stream else generate(
        fleet.router.url, pid, list(range(100, 400)))
    assert first.status_code == 200
    first_tokens = first.json()["usage"]["prompt_tokens"] if stream else 300
    home = record(fleet.router.url, pid)["replica"]
    before = held_counts(fleet)
    filler = threading.Thread(target=generate, args=(home, f"filler-{stream}", FILLER, 1600))
    filler.start()  # sent to the replica itself: the router adopts it there
    wait_until(lambda: record(home, pid)["status"] == "paused", "the program paused", 10)
    untagged = []
    for _ in range(3):  # untagged calls meanwhile: answered, never held
        untagged.append(generate(fleet.router.url, None, [5] * 50))
    untagged_done_while_filling = filler.is_alive()
    if stream:
        response = chat(fleet.router.url, pid, "word " * 400 + "more", stream=True)
        events = [line for line in response.iter_lines() if line]
        assert response.status_code == 200 and events[-1] == b"data: [DONE]"
        assert not any(b"error" in line for line in events), events
    else:
        response = generate(fleet.router.url, pid, list(range(100, 420)))
        assert response.status_code == 200, response.text
        assert len(response.json()["output_ids"]) == 4
    filler.join()
    target = fleet.other(home).url
    old, new = record(home, pid), record(target, pid)
    assert (old["status"], old["release_cause"], old["steps"]) == ("terminated", "migrated", 1)
    assert (new["status"], new["steps"], new["incarnation"]) == ("active", 1, 1)
    # its first call's KV came through the shared storage tier, not recomputed (whole pages)
    assert new["prefill_tokens_cached"] >= first_tokens // 16 * 16 - 16, new
    routed = record(fleet.router.url, pid)
    assert (routed["replica"], routed["moved_from"]) == (target, home)
    after = held_counts(fleet)
    assert after[home]["held_migrated"] - before[home]["held_migrated"] == 1
    for answer in untagged:
        assert answer.status_code == 200 and "x-program-id" not in answer.headers
    assert untagged_done_while_filling
    release_all(fleet, [pid, f"filler-{stream}"])


def test_a_call_a_router_held_before_is_resumed_by_force_by_that_wait(fleet):
    """A replica counts X-ThunderAgent-Held-S (what a router sends with a handed-back call)
    toward its max pause (120 s here): a new program held behind a filler is resumed by force
    within 60 s (2 s when the machine is quiet), not after 120. Both replicas are filled, so
    the router moves nothing."""
    before = held_counts(fleet)[fleet.a.url]
    fillers = [generate(server.url, f"credit-filler-{i}", FILLER, 1600, stream=True)
               for i, server in enumerate((fleet.a, fleet.b))]
    answers, held = [], None
    try:
        for i, server in enumerate((fleet.a, fleet.b)):
            wait_until(lambda: record(server.url, f"credit-filler-{i}").get("phase")
                       == "reasoning", "the filler runs", 30)
        held = threading.Thread(target=lambda: answers.append(generate(
            fleet.a.url, "credited", list(range(100, 400)),
            **{"X-ThunderAgent-Held-S": "118"})))
        held.start()
        wait_until(lambda: held_counts(fleet)[fleet.a.url]["force_resumes"] > before[
            "force_resumes"], "the credited call resumed by force", 60)
    finally:
        for response in fillers:
            response.close()  # the fillers are aborted
        if held is not None:
            held.join()
        release_all(fleet, ["credit-filler-0", "credit-filler-1", "credited"])
    after = held_counts(fleet)[fleet.a.url]
    assert answers[0].status_code == 200, answers[0].text
    assert (after["held_requests"] - before["held_requests"],
            after["force_resumes"] - before["force_resumes"]) == (2, 1)  # the filler's too
    bad = generate(fleet.a.url, "credited", [1, 2], **{"X-ThunderAgent-Held-S": "-1"})
    assert bad.status_code == 400 and "X-ThunderAgent-Held-S" in bad.text


def test_bad_input_gets_the_servers_own_answers(fleet):
    for headers in ({"X-Program-Id": "has space"}, {"X-Program-Id": "x" * 257}):
        mine = generate(fleet.router.url, None, [1, 2], **headers)
        theirs = generate(fleet.a.url, None, [1, 2], **headers)
        assert (mine.status_code, mine.json()) == (400, theirs.json())
    for path in ("/programs/nobody-knows", "/programs/has%20space"):
        mine, theirs = (requests.get(f"{base}{path}") for base in (fleet.router.url,
                                                                   fleet.a.url))
        assert (mine.status_code, mine.json()) == (theirs.status_code, theirs.json())
    bad_event = {"event": "sideways"}
    mine = requests.post(f"{fleet.router.url}/programs/x/tool", json=bad_event)
    theirs = requests.post(f"{fleet.a.url}/programs/x/tool", json=bad_event)
    assert (mine.status_code, mine.json()) == (400, theirs.json())
    for body in (b"[1]", b"{", b'{"program_id": null}'):
        mine = requests.post(f"{fleet.router.url}/programs/release", data=body)
        assert mine.status_code == 400 and "error" in mine.json()
    assert generate(fleet.router.url, "team/agent 1".replace(" ", "-"), [3] * 20).ok
    assert record(fleet.router.url, "team%2Fagent-1")["program_id"] == "team/agent-1"
    release_all(fleet, ["team/agent-1"])


def test_an_api_key_guards_the_router_and_bad_backends_stop_it_at_start(fleet, plain_server):
    keyed = RouterProcess([fleet.a.url], fleet.logs, "--api-key", "router-key", name="keyed")
    try:
        keyed.wait_ready(1)
        assert requests.get(f"{keyed.url}/programs").status_code == 401
        assert requests.get(f"{keyed.url}/programs",
                            headers={"Authorization": "Bearer router-key"}).status_code == 200
    finally:
        keyed.stop()
    for backends, says in (([fleet.a.url, plain_server.url], "plain SGLang"),
                           (["nonsense"], "is not an http(s) URL")):
        done = subprocess.run([sys.executable, "-m", "thunderagent_sglang.router",
                               "--backends", ",".join(backends)], cwd=REPO, timeout=60,
                              capture_output=True, text=True)
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_a_client_gone_mid_stream_ends_the_call_on_its_replica(fleet):
    """The client reads two events of a long stream and goes away: the router closes its
    call to the replica, which aborts it; nothing stays counted as running."""
    pid = "walks-away"
    response = generate(fleet.router.url, pid, [3] * 40, n=1500, stream=True)
    assert response.status_code == 200
    lines = response.iter_lines()
    assert [next(lines) for _ in range(3)][0].startswith(b"data:")
    replica = record(fleet.router.url, pid)["replica"]
    assert record(replica, pid)["in_flight"] == 1
    response.close()  # the client goes away mid-stream
    wait_until(lambda: record(replica, pid)["in_flight"] == 0, "the call ended upstream", 30)
    wait_until(lambda: {r["replica"]: r for r in fleet.router.status()["replicas"]}[replica][
        "calls"] == 0, "the router counts no call running", 10)
    assert record(replica, pid)["decode_tokens"] < 1500  # aborted, not run to its end
    release_all(fleet, [pid])


def test_an_unreachable_backend_is_probed_and_the_router_serves_meanwhile(fleet):
    dead = f"http://127.0.0.1:{free_port()}"
    router = RouterProcess([dead, fleet.a.url], fleet.logs, name="half")
    try:
        router.wait_ready(1)
        assert generate(router.url, "half-1", [4] * 20).status_code == 200
        assert record(router.url, "half-1")["replica"] == fleet.a.url
        replicas = {r["replica"]: r for r in router.status()["replicas"]}
        assert replicas[dead]["ready"] is False and replicas[dead]["poll_failures"] >= 1
    finally:
        router.stop()
    release_all(fleet, ["half-1"])


def test_a_killed_replica_is_taken_out_its_call_sent_elsewhere_and_its_programs_re_placed(
        fleet):
    """Last: it kills replica b and starts it again on the same port."""
    pids = [f"victim-{i}" for i in range(4)]
    # prompts of their own: a shared one would make the longest-prefix tie-break gather them
    prompts = {pid: [900 + i] * 60 for i, pid in enumerate(pids)}  # prefixes no other test used
    for pid in pids:
        assert generate(fleet.router.url, pid, prompts[pid]).status_code == 200
    victim = fleet.b
    on_victim = [p for p in pids if record(fleet.router.url, p)["replica"] == victim.url]
    assert on_victim
    in_flight = {}

    def long_call():
        in_flight["response"] = generate(fleet.router.url, on_victim[0],
                                         prompts[on_victim[0]] + [8] * 10,
                                         n=1500)

    caller = threading.Thread(target=long_call)
    caller.start()
    wait_until(lambda: record(victim.url, on_victim[0])["in_flight"] == 1, "the call runs", 10)
    os.killpg(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait()
    caller.join(300)
    response = in_flight["response"]  # nothing reached the client: sent once more, to a
    assert response.status_code == 200 and len(response.json()["output_ids"]) == 1500
    status = fleet.router.status()
    assert not {r["replica"]: r for r in status["replicas"]}[victim.url]["ready"]
    assert status["counters"]["resent_after_failure"] == 1
    again = generate(fleet.router.url, on_victim[0], prompts[on_victim[0]] + [8] * 10)
    assert again.status_code == 200  # answered once, on the replica left
    moved = record(fleet.router.url, on_victim[0])
    assert (moved["replica"], moved["kv_lost_on"], moved["steps"]) == (fleet.a.url, victim.url,
                                                                       2)
    restarted = Server("replica-b", REPLICA_ARGS, {
        "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": str(fleet.logs / "kv-storage")},
        fleet.logs, port=victim.port)
    fleet.b = restarted
    restarted.wait_ready()
    fleet.router.wait_ready(2)
    fresh = generate(fleet.router.url, "after-restart", [6] * 40)
    assert fresh.status_code == 200
    assert record(fleet.router.url, "after-restart")["replica"] == victim.url  # the emptier one
    restarted.stop()


@pytest.fixture(autouse=True)
def _diag(request, fleet):
    yield
    import time as _t
    for _ in range(3):
        for s in (fleet.a, fleet.b):
            try:
                v = requests.get(f"{s.url}/programs").json()
            except Exception:
                continue
            print("\nDIAGF", request.node.name[:30], s.url, v["scheduler"],
                  [(r["program_id"], r["status"], r["context_tokens"], r["in_flight"], r["waiting"])
                   for r in v["programs"] if r["status"] != "terminated"])
        _t.sleep(1)
