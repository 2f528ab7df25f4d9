"""Admission by feedback on a real server (``--thunderagent-admission feedback``, issue 15).

Two programs fill the 1024-token pool's watermarks and go into a tool call (they make no more
calls); a third program's call is held for room, so the engine idles with a call waiting.
The fixed watermarks would hold that call until the others come back or until max pause (600
s here). With feedback the controller raises the pool its watermarks apply to at the end of
its period (5 s); the held call then runs while the other two still act. The decision trace
shows the order: the call held, the pool scaled (a ``config`` record), then the call admitted.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.integration.server import Server

pytestmark = pytest.mark.server

POOL = 1024
ARGS = ["--max-total-tokens", str(POOL), "--context-length", str(POOL), "--page-size", "16",
        "--chunked-prefill-size", "128", "--enable-metrics", "--thunderagent-tick", "0.2",
        # acting programs count in full, so the two acting programs leave no room below high
        "--thunderagent-decay", "off", "--thunderagent-offload", "off",
        "--thunderagent-max-pause", "600", "--thunderagent-admission", "feedback"]
ACTING_TOKENS, HELD_TOKENS = 400, 300  # 2 x 400 + 300 (+ outputs) > high (0.95 x 1024)


def generate(server, pid: str, tokens: list[int], timeout_s: float = 300) -> requests.Response:
    return requests.post(f"{server.url}/generate", headers={"X-Program-Id": pid}, json={
        "input_ids": tokens, "sampling_params": {"max_new_tokens": 4, "temperature": 0,
                                                 "ignore_eos": True}}, timeout=timeout_s)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    logs = tmp_path_factory.mktemp("admission-feedback")
    trace = logs / "decisions.jsonl"
    server = Server("admission-feedback", [*ARGS, "--thunderagent-decision-trace", str(trace)],
                    {}, logs).wait_ready()
    try:
        for i, pid in enumerate(("acting-a", "acting-b")):
            base = 3 + 450 * i
            assert generate(server, pid, list(range(base, base + ACTING_TOKENS))).status_code \
                == 200
        started = time.monotonic()
        # held until the pool is scaled: fails here (a timeout) if it never is
        held = generate(server, "held-c", list(range(1000, 1000 + HELD_TOKENS)), timeout_s=60)
        waited = time.monotonic() - started
        listing = requests.get(f"{server.url}/programs", timeout=30).json()
        return {"held": held, "waited": waited, "listing": listing,
                "trace": [json.loads(line) for line in trace.read_text().splitlines()],
                "log": server.log()}
    finally:
        server.stop()


def test_the_held_call_runs_after_the_controller_scales_the_pool_while_the_others_act(run):
    assert run["held"].status_code == 200, run["held"].text
    # held (the trace test shows what let it go), and for far less than max pause: the first
    # period ends up to 5 s after the controller's start, which came before the call
    assert 0.2 <= run["waited"] <= 30.0, run["waited"]
    programs = {p["program_id"]: p for p in run["listing"]["programs"]}
    for pid in ("acting-a", "acting-b"):  # still live and in their tool call: never called again
        assert programs[pid]["status"] == "active" and programs[pid]["phase"] == "acting"
        assert programs[pid]["steps"] == 1
    scheduler = run["listing"]["scheduler"]
    assert scheduler["capacity_tokens"] > POOL and scheduler["admission_factor"] >= 1.2
    assert scheduler["admission_changes"] >= 1 and scheduler["idle_waiting_s"] >= 0.2
    assert "admission x1.20" in run["log"] and "(--thunderagent-admission feedback)" in run["log"]


def test_the_trace_shows_held_then_the_pool_scaled_then_the_call_admitted(run):
    records = run["trace"]
    held_at = next(i for i, r in enumerate(records) if r["e"] == "held" and r["p"] == "held-c")
    call_at = next(i for i, r in enumerate(records) if r["e"] == "call" and r["p"] == "held-c")
    scaled = [i for i, r in enumerate(records) if r["e"] == "config"
              and r["capacity_tokens"] > POOL]
    assert records[0]["e"] == "config" and records[0]["capacity_tokens"] == POOL
    assert scaled and held_at < scaled[0] < call_at
    # nothing else made room: no pause, no end, no call of the acting programs in between
    between = records[held_at + 1:call_at]
    assert not [r for r in between if r["e"] in ("pause", "end", "call", "finish")]
