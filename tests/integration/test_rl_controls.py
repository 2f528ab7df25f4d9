"""SGLang's engine controls that RL frameworks call between rollout steps, on a real server
with the HiCache host tier (write-back), offload and the scheduler on: after each, our
residency, host-tier counts, demand and held calls are exact again.

- ``/flush_cache`` empties the cache: no program counts a resident or host token; paused and
  held programs survive and resume; a held call is answered.
- ``/update_weights_from_disk`` outside a generation pause waits for every call in flight,
  and a held call is one: it is let go first (its program resumed), so the update finishes
  at once instead of waiting for the client to give up; the outputs are unchanged (same
  weights) and a paused program without a held call stays paused.
- ``/pause_generation`` (retract, in place) and ``/continue_generation`` around a running
  call: it is answered in full; ``abort`` answers the running call and a held one.
- ``/release_memory_occupation`` and ``/resume_memory_occupation`` need a GPU: on the CPU
  engine they answer 400 instead of taking the scheduler down (the held-call gate around
  them is tested without a server in ``tests/unit/test_runtime.py``).

One server, every step in order (module scope); the last step reads the idle checks.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.integration.server import Server, wait_until

pytestmark = pytest.mark.server

ARGS = ["--max-total-tokens", "1024", "--context-length", "1024", "--page-size", "16",
        "--chunked-prefill-size", "256", "--enable-hierarchical-cache",
        "--hicache-io-backend", "direct", "--hicache-mem-layout", "layer_first",
        "--hicache-write-policy", "write_back",
        # The offload cost model of the shared HiCache server: programs above ~41 own
        # tokens are offloaded when paused.
        "--thunderagent-offload-bandwidth", "1", "--thunderagent-offload-latency", "0.002",
        "--thunderagent-recompute-rate", "20000"]
A = [3 + i % 500 for i in range(200)]
B = [600 + i % 500 for i in range(150)]
C = [1200 + i % 500 for i in range(120)]
LONG = 800  # output tokens of a call still running when the generation pause comes


def generate(server, pid, ids, max_new=4):
    headers = {"X-Program-Id": pid} if pid else {}
    return requests.post(f"{server.url}/generate", headers=headers, json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True},
    }, timeout=180)


def post(server, path, body=None, timeout=60):
    return requests.post(f"{server.url}{path}", json=body, timeout=timeout)


def listing(server) -> dict:
    return requests.get(f"{server.url}/programs", timeout=30).json()


def records(server) -> dict:
    return {p["program_id"]: p for p in listing(server)["programs"]
            if p.get("status") != "terminated"}


def in_thread(fn, *args):
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn(*args)), daemon=True)
    thread.start()
    return thread, box


def held_call(server, pid, ids):
    """A call of operator-paused ``pid``, held until its program resumes."""
    thread, box = in_thread(generate, server, pid, ids)
    wait_until(lambda: records(server)[pid]["waiting"] == 1, f"{pid}'s call held",
               every_s=0.05)
    return thread, box


def flush_step(server) -> dict:
    for pid, ids in (("a", A), ("b", B), ("c", C)):
        assert generate(server, pid, ids).status_code == 200
    for pid in ("b", "c"):
        assert post(server, f"/programs/{pid}/pause").status_code == 200
    thread, box = held_call(server, "c", C + [7] * 10)
    before = records(server)
    flushed = post(server, "/flush_cache")
    after, totals = records(server), listing(server)
    resumed = post(server, "/programs/c/resume").json()
    thread.join(60)
    post(server, "/programs/b/resume")
    b_next = generate(server, "b", B + [5] * 5).json()
    return {"before": before, "flushed": flushed.status_code, "after": after,
            "totals": totals, "resumed": resumed, "held_reply": box[0] if box else None,
            "b_cached": b_next["meta_info"]["cached_tokens"]}


def weights_step(server) -> dict:
    model_path = requests.get(f"{server.url}/model_info", timeout=30).json()["model_path"]
    a_before = generate(server, "a", A + [9] * 8).json()["output_ids"]
    assert post(server, "/programs/b/pause").status_code == 200
    assert post(server, "/programs/c/pause").status_code == 200
    thread, box = held_call(server, "c", C + [7] * 12)
    sent = time.monotonic()
    update = post(server, "/update_weights_from_disk", {"model_path": model_path}, timeout=120)
    took = time.monotonic() - sent
    thread.join(60)
    after = records(server)
    a_after = generate(server, "a", A + [9] * 8).json()["output_ids"]
    post(server, "/programs/b/resume")
    b_next = generate(server, "b", B + [5] * 9)
    return {"update": update, "took_s": took, "held_reply": box[0] if box else None,
            "after": after, "outputs": (a_before, a_after), "b_next": b_next.status_code,
            "late_call": generate(server, "late-new", [31] * 40).status_code}


def pause_step(server, mode: str) -> dict:
    pid = f"long-{mode}"
    thread, box = in_thread(generate, server, pid, [9] * 100, LONG)
    wait_until(lambda: records(server).get(pid, {}).get("in_flight") == 1,
               f"{pid}'s call running", every_s=0.02)
    paused = post(server, "/pause_generation", {"mode": mode})
    during = records(server)[pid]
    resumed = post(server, "/continue_generation", {})
    thread.join(120)
    reply = box[0] if box else None
    return {"paused": paused.status_code, "during": during, "continued": resumed.status_code,
            "reply": reply, "after": records(server)[pid]}


def abort_step(server) -> dict:
    assert generate(server, "f", [41] * 64).status_code == 200
    assert post(server, "/programs/f/pause").status_code == 200
    held, held_box = held_call(server, "f", [41] * 64 + [42] * 8)
    running, run_box = in_thread(generate, server, "e", [11] * 100, LONG)
    wait_until(lambda: records(server).get("e", {}).get("in_flight") == 1, "e's call running",
               every_s=0.02)
    paused = post(server, "/pause_generation", {"mode": "abort"})
    held.join(60)
    running.join(60)
    after = records(server)
    continued = post(server, "/continue_generation", {})
    post(server, "/programs/f/resume")
    return {"paused": paused.status_code, "held_reply": held_box[0] if held_box else None,
            "running_reply": run_box[0] if run_box else None, "after": after,
            "continued": continued.status_code,
            "f_next": generate(server, "f", [41] * 64 + [43] * 8).status_code}


def memory_step(server) -> dict:
    return {path: post(server, path, {}) for path in ("/release_memory_occupation",
                                                        "/resume_memory_occupation")}


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    server = Server("rl-controls", ARGS, {}, tmp_path_factory.mktemp("rl-controls"))
    try:
        server.wait_ready()
        out = {"flush": flush_step(server), "weights": weights_step(server),
               "retract": pause_step(server, "retract"),
               "in_place": pause_step(server, "in_place"), "abort": abort_step(server),
               "memory": memory_step(server)}
        before = len(server.idle_checks())
        assert generate(server, None, [1000 + i % 800 for i in range(700)]).status_code == 200
        out["idle"] = server.last_idle_check_after(before)
        out["log"] = server.log()
        out["alive"] = requests.get(f"{server.url}/health", timeout=30).status_code
        return out
    finally:
        server.stop()


def test_a_flush_leaves_nothing_counted_as_resident_and_held_programs_resume(steps):
    run = steps["flush"]
    assert run["before"]["b"]["host_tokens"] == 144 and run["before"]["c"]["host_tokens"] == 112
    assert run["before"]["a"]["resident_tokens"] > 0
    assert run["flushed"] == 200
    for pid in "abc":
        assert (run["after"][pid]["resident_tokens"], run["after"][pid]["host_tokens"]) == (0, 0)
    assert (run["after"]["b"]["status"], run["after"]["c"]["status"]) == ("paused", "paused")
    assert run["after"]["c"]["waiting"] == 1
    assert (run["totals"]["resident_tokens"], run["totals"]["tagged_resident_tokens"]) == (0, 0)
    assert run["totals"]["demand_tokens"] > 0  # demand is the programs' contexts, not the cache
    assert run["resumed"]["status"] == "active"
    assert run["held_reply"] is not None and run["held_reply"].status_code == 200
    assert run["b_cached"] == 0  # its KV went with the flush: recomputed, not loaded back


def test_a_weight_update_lets_held_calls_go_instead_of_waiting_for_them(steps):
    run = steps["weights"]
    assert run["update"].status_code == 200 and run["update"].json()["success"] is True
    assert run["took_s"] < 30  # it used to wait until the held call's client gave up
    assert run["held_reply"] is not None and run["held_reply"].status_code == 200
    assert run["after"]["c"]["status"] == "active" and run["after"]["c"]["waiting"] == 0
    assert run["after"]["b"]["status"] == "paused"  # no held call: its pause stays
    assert (run["after"]["a"]["resident_tokens"], run["after"]["a"]["host_tokens"]) == (0, 0)
    before, after = run["outputs"]
    assert before == after and len(before) == 4
    assert (run["b_next"], run["late_call"]) == (200, 200)  # calls are held again after it


@pytest.mark.parametrize("mode", ["retract", "in_place"])
def test_a_call_running_across_a_generation_pause_is_answered_in_full(steps, mode):
    run = steps[mode]
    assert (run["paused"], run["continued"]) == (200, 200)
    assert run["during"]["phase"] == "reasoning" and run["during"]["in_flight"] == 1
    assert run["reply"] is not None and run["reply"].status_code == 200
    assert len(run["reply"].json()["output_ids"]) == LONG
    assert (run["after"]["phase"], run["after"]["in_flight"], run["after"]["steps"]) == (
        "acting", 0, 1)


def test_an_abort_pause_answers_running_and_held_calls_and_the_programs_go_on(steps):
    run = steps["abort"]
    assert (run["paused"], run["continued"]) == (200, 200)
    for name in ("held_reply", "running_reply"):  # answered as SGLang answers an abort
        reply = run[name]
        assert reply is not None and reply.status_code == 200, name
        assert reply.json()["meta_info"]["finish_reason"]["type"] == "abort", reply.text
    assert run["held_reply"].json()["output_ids"] == []  # it never started
    assert run["after"]["e"]["in_flight"] == 0 and run["after"]["f"]["waiting"] == 0
    assert run["after"]["f"]["status"] == "paused"  # still the operator's pause
    assert run["f_next"] == 200


def test_memory_occupation_routes_answer_400_on_the_cpu_engine(steps):
    for path, reply in steps["memory"].items():
        assert reply.status_code == 400, (path, reply.text)
        assert "GPU" in reply.json()["error"]
    assert steps["alive"] == 200


def test_after_every_control_nothing_leaked_and_residency_agrees_with_the_tree(steps):
    idle = steps["idle"]
    assert idle["leak"] == "False" and idle["protected"] == 0
    assert "residency recount: MISMATCH" not in steps["log"]
    assert "ThunderAgent residency recount: ok" in steps["log"]
