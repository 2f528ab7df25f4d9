"""The scheduler's bounds on a real server: a program the scheduler paused is force-resumed
after ``--thunderagent-max-pause`` even though it still does not fit, and on shutdown
(SIGTERM to the launcher) a held call is answered 503 at once instead of keeping SGLang's
drain waiting for a resume.

One server (it is shut down by the last step): a 1024-token pool; decay is slowed so that an
acting program keeps counting at its full context.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from tests.integration.server import Server, wait_until

pytestmark = pytest.mark.server

MAX_PAUSE_S = 3.0
ARGS = ["--max-total-tokens", "1024", "--context-length", "1024", "--page-size", "16",
        "--chunked-prefill-size", "256", "--thunderagent-tick", "0.2",
        "--thunderagent-decay-half-life", "1000", "--thunderagent-max-pause", str(MAX_PAUSE_S)]


def generate(server, pid, ids):
    return requests.post(f"{server.url}/generate", headers={"X-Program-Id": pid}, json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }, timeout=120)


def record(server, pid) -> dict:
    return requests.get(f"{server.url}/programs/{pid}", timeout=30).json()


def scheduler_stats(server) -> dict:
    return requests.get(f"{server.url}/programs", timeout=30).json()["scheduler"]


def in_thread(fn, *args) -> tuple[threading.Thread, list]:
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn(*args)), daemon=True)
    thread.start()
    return thread, box


def force_resume_scenario(server) -> dict:
    """``hog`` (700 tokens) goes acting and, decay slowed, keeps counting 704 tokens.
    ``late`` (a new program, 400) does not fit beside it and new programs wait: it is held
    until max pause force-resumes it, which pauses ``hog`` (acting) to make room. ``hog``'s
    next call is then held beside ``late`` (acting, not decaying) until max pause again."""
    hog = [3 + i % 1000 for i in range(700)]
    assert generate(server, "hog", hog).status_code == 200
    thread, late = in_thread(generate, server, "late", [1100 + i % 900 for i in range(400)])
    new_held = wait_until(lambda: (s := scheduler_stats(server))["held_now"] == 1 and s,
                          "late's call held", every_s=0.05)
    thread.join(timeout=60)
    paused = record(server, "hog")
    thread, box = in_thread(generate, server, "hog", hog + [5] * 20)
    held = wait_until(lambda: (r := record(server, "hog"))["waiting"] == 1 and r,
                      "hog's next call held", every_s=0.05)
    thread.join(timeout=60)
    return {"new_held": new_held, "late": late[0] if late else None, "paused": paused,
            "held": held, "reply": box[0] if box else None, "after": record(server, "hog"),
            "stats": scheduler_stats(server)}


def shutdown_scenario(server) -> dict:
    """An operator pauses ``late``; its next call is held; then SIGTERM to the launcher."""
    assert requests.post(f"{server.url}/programs/late/pause", timeout=30).status_code == 200
    thread, box = in_thread(generate, server, "late", [1100 + i % 900 for i in range(420)])
    wait_until(lambda: record(server, "late")["waiting"] == 1, "late's call held",
               every_s=0.05)
    os.kill(server.proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    thread.join(timeout=60)
    answered_s = time.monotonic() - sent
    try:
        exit_code = server.proc.wait(timeout=90)
    except Exception:  # noqa: BLE001 - reported by the assertion below
        exit_code = None
    return {"reply": box[0] if box else None, "answered_s": answered_s, "exit": exit_code,
            "log": server.log()}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    server = Server("sched-controls", ARGS, {"THUNDERAGENT_LOG_LEVEL": "DEBUG"}, tmp_path_factory.mktemp("sched-controls"))
    try:
        server.wait_ready()
        return force_resume_scenario(server), shutdown_scenario(server)
    finally:
        server.stop()


def test_new_and_paused_programs_are_force_resumed_after_max_pause(scenarios):
    run, _ = scenarios
    assert run["new_held"]["force_resumes"] == 0  # late was held as a new program
    assert run["late"] is not None and run["late"].status_code == 200, run["late"]
    assert run["paused"]["status"] == "paused"  # made room for late
    assert run["held"]["status"] == "paused" and run["held"]["waiting"] == 1
    assert run["reply"] is not None and run["reply"].status_code == 200, run["reply"]
    assert run["after"]["steps"] == 2 and run["after"]["waiting"] == 0
    assert run["stats"]["force_resumes"] == 2  # late, then hog
    assert run["stats"]["held_now"] == 0


def test_a_held_call_is_answered_503_at_shutdown_and_the_server_exits(scenarios):
    _, down = scenarios
    reply = down["reply"]
    assert reply is not None and reply.status_code == 503, reply
    assert "shutting down" in reply.text
    assert down["answered_s"] < 15  # not after SGLang's drain waited for a resume
    assert "shutdown: scheduler answered 200" in down["log"]
    assert '"answered": 1' in down["log"] or '"answered":1' in down["log"]
    assert down["exit"] is not None
