"""The scheduler's bounds on a real server: a program the scheduler paused is force-resumed
after ``--thunderagent-max-pause`` even though it still does not fit, and on shutdown
(SIGTERM to the launcher) a held call is answered 503 at once instead of keeping SGLang's
drain waiting for a resume. At most one call is held (``--thunderagent-max-held 1``): a call
that would wait beyond it is answered 429 with Retry-After. With SGLang's ``--admin-api-key``,
the operator routes take that key and a client's own release stays open.

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
ADMIN_KEY = "operator-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ARGS = ["--max-total-tokens", "1024", "--context-length", "1024", "--page-size", "16",
        "--chunked-prefill-size", "256", "--thunderagent-tick", "0.2",
        "--thunderagent-decay-half-life", "1000", "--thunderagent-max-pause", str(MAX_PAUSE_S),
        "--thunderagent-max-held", "1", "--admin-api-key", ADMIN_KEY]


def generate(server, pid, ids, stream=False):
    return requests.post(f"{server.url}/generate", headers={"X-Program-Id": pid}, json={
        "input_ids": ids, "stream": stream,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }, timeout=120)


def post(server, path, **kwargs):
    return requests.post(f"{server.url}{path}", timeout=30, **kwargs)


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


def operator_scenario(server) -> dict:
    """Who may pause, resume and release, with an admin key set."""
    for pid in ("mine", "other"):
        assert generate(server, pid, [7] * 32).status_code == 200
    out = {"pause_no_key": post(server, "/programs/other/pause").status_code,
           "pause_wrong_key": post(server, "/programs/other/pause",
                                   headers={"Authorization": "Bearer nope"}).status_code,
           "pause_admin": post(server, "/programs/other/pause", headers=ADMIN).json(),
           "resume_no_key": post(server, "/programs/other/resume").status_code,
           "resume_admin": post(server, "/programs/other/resume", headers=ADMIN).json(),
           "release_other": post(server, "/programs/release", json={"program_id": "other"}),
           "release_other_named_wrong": post(server, "/programs/release",
                                             json={"program_id": "other"},
                                             headers={"X-Program-Id": "mine"}).status_code,
           "operator_release_no_key": post(server, "/programs/other/release").status_code,
           "other_after_refusals": record(server, "other")["status"],
           "operator_release": post(server, "/programs/other/release", headers=ADMIN).json(),
           "own_release": post(server, "/programs/release", json={"program_id": "mine"},
                               headers={"X-Program-Id": "mine"}).json()}
    return out


def backpressure(server) -> dict:
    """One call is held (the bound): a paused program's next call, and a new program's call
    that does not fit, are answered 429 with Retry-After; one that fits runs."""
    before = metric_value(server, "held_refused")
    paused_again = generate(server, "late", [1100 + i % 900 for i in range(430)])
    too_big = generate(server, "too-big", [5 + i % 900 for i in range(500)])
    streamed = generate(server, "too-big-stream", [9 + i % 900 for i in range(500)], stream=True)
    fits = generate(server, "fits", [11] * 16)
    return {"paused_again": paused_again, "too_big": too_big, "streamed": streamed,
            "fits": fits, "refused": metric_value(server, "held_refused") - before,
            "held_now": scheduler_stats(server)["held_now"],
            "too_big_record": requests.get(f"{server.url}/programs/too-big", timeout=30)}


def metric_value(server, event: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"{server.url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "thunderagent_scheduler_events_total"
                    and sample.labels.get("event") == event):
                return sample.value
    raise AssertionError(f"no thunderagent_scheduler_events_total{{event={event}}} in /metrics")


def shutdown_scenario(server) -> dict:
    """An operator pauses ``late``; its next call is held (the bound is reached: see
    ``backpressure``); then SIGTERM to the launcher."""
    assert post(server, "/programs/late/pause", headers=ADMIN).status_code == 200
    thread, box = in_thread(generate, server, "late", [1100 + i % 900 for i in range(420)])
    wait_until(lambda: record(server, "late")["waiting"] == 1, "late's call held",
               every_s=0.05)
    pressure = backpressure(server)
    os.kill(server.proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    thread.join(timeout=60)
    answered_s = time.monotonic() - sent
    try:
        exit_code = server.proc.wait(timeout=90)
    except Exception:  # noqa: BLE001 - reported by the assertion below
        exit_code = None
    return {"reply": box[0] if box else None, "answered_s": answered_s, "exit": exit_code,
            "log": server.log(), "pressure": pressure}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory):
    server = Server("sched-controls", ARGS, {"THUNDERAGENT_LOG_LEVEL": "DEBUG"}, tmp_path_factory.mktemp("sched-controls"))
    try:
        server.wait_ready()
        run = force_resume_scenario(server)
        ops = operator_scenario(server)
        return run, shutdown_scenario(server), ops
    finally:
        server.stop()


def test_new_and_paused_programs_are_force_resumed_after_max_pause(scenarios):
    run, _, _ = scenarios
    assert run["new_held"]["force_resumes"] == 0  # late was held as a new program
    assert run["late"] is not None and run["late"].status_code == 200, run["late"]
    assert run["paused"]["status"] == "paused"  # made room for late
    assert run["held"]["status"] == "paused" and run["held"]["waiting"] == 1
    assert run["reply"] is not None and run["reply"].status_code == 200, run["reply"]
    assert run["after"]["steps"] == 2 and run["after"]["waiting"] == 0
    assert run["stats"]["force_resumes"] == 2  # late, then hog
    assert run["stats"]["held_now"] == 0


def test_a_held_call_is_answered_503_at_shutdown_and_the_server_exits(scenarios):
    _, down, _ = scenarios
    reply = down["reply"]
    assert reply is not None and reply.status_code == 503, reply
    assert "shutting down" in reply.text
    assert down["answered_s"] < 15  # not after SGLang's drain waited for a resume
    assert "shutdown: scheduler answered 200" in down["log"]
    assert '"answered": 1' in down["log"] or '"answered":1' in down["log"]
    assert down["exit"] is not None


def test_beyond_max_held_a_call_that_would_wait_is_answered_429_with_retry_after(scenarios):
    pressure = scenarios[1]["pressure"]
    for name in ("paused_again", "too_big"):
        reply = pressure[name]
        assert reply.status_code == 429, (name, reply.status_code, reply.text)
        assert reply.headers["Retry-After"] == "5" and "--thunderagent-max-held 1" in reply.text
    streamed = pressure["streamed"]  # the status line went out first: the error is in-stream
    assert streamed.status_code == 200 and '"status_code":429' in streamed.text, streamed.text
    assert pressure["fits"].status_code == 200
    assert pressure["refused"] == 3 and pressure["held_now"] == 1
    assert pressure["too_big_record"].status_code == 404  # refused: nothing left behind


def test_operator_routes_take_the_admin_key_and_a_clients_own_release_stays_open(scenarios):
    ops = scenarios[2]
    assert (ops["pause_no_key"], ops["pause_wrong_key"], ops["resume_no_key"]) == (401, 401, 401)
    assert ops["pause_admin"]["status"] == "paused" and ops["pause_admin"]["operator_paused"]
    assert ops["resume_admin"]["status"] == "active"
    assert ops["release_other"].status_code == 403
    assert "admin key" in ops["release_other"].json()["error"]
    assert (ops["release_other_named_wrong"], ops["operator_release_no_key"]) == (403, 401)
    assert ops["other_after_refusals"] == "active"
    assert (ops["operator_release"]["status"], ops["operator_release"]["release_cause"]) == (
        "terminated", "explicit")
    assert (ops["own_release"]["status"], ops["own_release"]["released"]) == ("terminated", True)
