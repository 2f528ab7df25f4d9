"""Selective offload (issue 4, demonstration 2): a paused program's KV goes to the host tier
and is loaded back at resume; a small one is dropped instead, per the cost model."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import requests

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.server
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def generate(server, pid, ids):
    reply = requests.post(f"{server.url}/generate", headers={**AUTH, "X-Program-Id": pid}, json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()


def record(server, pid):
    return requests.get(f"{server.url}/programs/{pid}", headers=AUTH, timeout=30).json()


def control(server, pid, op):
    reply = requests.post(f"{server.url}/programs/{pid}/{op}", headers=AUTH, timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def backed_up(server, pid, tokens):
    """Wait until write-through has copied the program's KV to the host tier."""
    deadline = time.monotonic() + 10
    while record(server, pid)["host_tokens"] < tokens:
        assert time.monotonic() < deadline, record(server, pid)
        time.sleep(0.05)


def test_paused_program_is_offloaded_and_prefetched_back_at_resume(hicache_server):
    pid = f"offload-{uuid.uuid4().hex[:8]}"
    prompt = [300 + i for i in range(112)]  # 7 pages of 16
    first = generate(hicache_server, pid, prompt)
    backed_up(hicache_server, pid, 112)

    paused = control(hicache_server, pid, "pause")
    assert paused["kv_decision"] == "offload"
    assert (paused["resident_tokens"], paused["host_tokens"]) == (0, 112)

    resumed = control(hicache_server, pid, "resume")
    assert resumed["kv_decision"] is None
    assert (resumed["resident_tokens"], resumed["host_tokens"]) == (112, 112)  # prefetched

    again = generate(hicache_server, pid, prompt)
    assert again["output_ids"] == first["output_ids"]  # identical to the uncached first call
    # The prompt's last page is recomputed (SGLang matches at most len - 1 tokens);
    # the other six came from the device: loaded back before the request arrived.
    assert again["meta_info"]["cached_tokens_details"] == {"device": 96, "host": 0}
    log = hicache_server.log()
    assert f"program {pid} paused: KV offload" in log
    assert f"program {pid} resumed: 112 tokens loaded back from the host tier" in log


def test_a_program_released_right_after_resume_leaves_nothing_locked(hicache_server):
    """The prefetch at resume runs at once: a program released before its next call must not
    leave its loaded KV locked (SGLang starts queued loads only with its next prefill batch;
    with 400 of 1024 tokens locked, the 700-token call below could never be scheduled)."""
    pid = f"released-{uuid.uuid4().hex[:8]}"
    generate(hicache_server, pid, [400 + i for i in range(400)])
    backed_up(hicache_server, pid, 400)
    assert control(hicache_server, pid, "pause")["kv_decision"] == "offload"
    assert control(hicache_server, pid, "resume")["resident_tokens"] == 400
    release = requests.post(f"{hicache_server.url}/programs/release", headers=AUTH,
                            json={"program_id": pid}, timeout=30)
    assert release.status_code == 200, release.text
    before = len(hicache_server.idle_checks())
    reply = requests.post(f"{hicache_server.url}/generate", headers=AUTH, json={
        "input_ids": [1000 + i % 900 for i in range(700)],
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }, timeout=60)
    assert reply.status_code == 200, reply.text
    idle = hicache_server.last_idle_check_after(before)
    assert idle["leak"] == "False" and idle["protected"] == 0


def test_small_program_is_dropped_because_recompute_is_cheaper(hicache_server):
    pid = f"drop-{uuid.uuid4().hex[:8]}"
    prompt = [700 + i for i in range(20)]  # 20 + 3 outputs with KV: one page of 16
    first = generate(hicache_server, pid, prompt)
    backed_up(hicache_server, pid, 16)

    paused = control(hicache_server, pid, "pause")
    assert paused["kv_decision"] == "drop"
    assert (paused["resident_tokens"], paused["host_tokens"]) == (0, 0)
    assert control(hicache_server, pid, "resume")["resident_tokens"] == 0  # nothing to load

    again = generate(hicache_server, pid, prompt)
    assert again["meta_info"]["cached_tokens"] == 0
    assert again["output_ids"] == first["output_ids"]
    assert "recompute 0.800 ms <= load-back 2.016 ms for 16 tokens" in hicache_server.log()


def test_cost_model_is_logged_at_start_and_counted_in_metrics(hicache_server):
    log = hicache_server.log()
    assert "ThunderAgent: selective KV offload on; host link measured" in log
    assert "cost model: bandwidth 1.00 GB/s, latency 2000 us, 1024 B/token, recompute " \
           "20000 tokens/s, break-even 41 tokens" in log
    metrics = requests.get(f"{hicache_server.url}/metrics", headers=AUTH, timeout=30).text
    assert 'thunderagent_kv_decisions_total{decision="offload"}' in metrics


def test_pausing_a_reasoning_program_moves_none_of_another_programs_kv(hicache_server):
    """Offload is exact: pausing P frees P's own unlocked device KV only. Here P's call is
    running, so its nodes are locked and nothing of it can move; before, the eviction asked
    for P's token count and took another program's KV instead."""
    other, pid = (f"{name}-{uuid.uuid4().hex[:8]}" for name in ("bystander", "running"))
    generate(hicache_server, other, [500 + i for i in range(112)])
    backed_up(hicache_server, other, 112)
    before = record(hicache_server, other)["resident_tokens"]
    assert before == 112
    prompt = [800 + i for i in range(96)]
    generate(hicache_server, pid, prompt)
    backed_up(hicache_server, pid, 96)
    done = threading.Event()

    def long_call():
        try:
            requests.post(f"{hicache_server.url}/generate", headers={**AUTH, "X-Program-Id": pid},
                          json={"input_ids": prompt + [7] * 16, "sampling_params": {
                              "max_new_tokens": 400, "temperature": 0, "ignore_eos": True}},
                          timeout=120)
        finally:
            done.set()

    thread = threading.Thread(target=long_call)
    thread.start()
    deadline = time.monotonic() + 30
    while record(hicache_server, pid)["phase"] != "reasoning":
        assert time.monotonic() < deadline and not done.is_set()
        time.sleep(0.02)
    paused = control(hicache_server, pid, "pause")
    assert paused["status"] == "paused" and not done.is_set()
    assert record(hicache_server, other)["resident_tokens"] == before
    thread.join(120)
    control(hicache_server, pid, "resume")
    for name in (pid, other):
        requests.post(f"{hicache_server.url}/programs/release", headers=AUTH,
                      json={"program_id": name}, timeout=30)


def tool_hint(server, pid, tool, event="start"):
    body = {"event": event, "tool": tool}
    if event == "start":
        body["expected_s"] = 30  # keeps the program live through the test (2 s idle expiry)
    reply = requests.post(f"{server.url}/programs/{pid}/tool", headers=AUTH, json=body,
                          timeout=30)
    assert reply.status_code == 200, reply.text
    return reply.json()


def prefetches(server):
    metrics = requests.get(f"{server.url}/metrics", headers=AUTH, timeout=30).text
    return {line.split('"')[1]: float(line.split()[-1]) for line in metrics.splitlines()
            if line.startswith("thunderagent_prefetches_total{")}


def no_live_programs(server):
    deadline = time.monotonic() + 10
    while requests.get(f"{server.url}/programs?live=1", headers=AUTH,
                       timeout=30).json()["programs"]:
        assert time.monotonic() < deadline, "earlier tests' programs stayed live"
        time.sleep(0.2)


def test_a_long_tool_is_offloaded_at_its_start_and_back_on_device_before_the_next_call(
        hicache_server):
    """Issue 15: with the pool contended (decay admits two programs of 484 and 564 tokens into
    the 1024-token pool), a tool predicted to take 1.6 s moves its program's KV to the host at
    the tool's start and loads it back before the predicted return, so the next call finds it
    on the device; a tool predicted short keeps its KV."""
    tag = uuid.uuid4().hex[:8]
    slow, quick = f"slow-{tag}", f"quick-{tag}"
    long_pid, short_pid = f"long-tool-{tag}", f"short-tool-{tag}"
    no_live_programs(hicache_server)
    short_prompt = [1100 + i for i in range(480)]
    generate(hicache_server, short_pid, short_prompt)
    tool_hint(hicache_server, short_pid, quick)
    time.sleep(0.05)
    generate(hicache_server, short_pid, short_prompt)  # quick observed at about 0.05 s
    tool_hint(hicache_server, short_pid, quick)  # live through the test (2 s idle expiry)

    time.sleep(2.0)  # the short-tool program's demand decays (to 365 tokens), so both fit
    prompt = [1350 + i for i in range(560)]
    first = generate(hicache_server, long_pid, prompt)
    tool_hint(hicache_server, long_pid, slow)
    time.sleep(1.6)
    generate(hicache_server, long_pid, prompt)  # slow observed at about 1.6 s
    backed_up(hicache_server, long_pid, 560)
    before = prefetches(hicache_server)

    started = tool_hint(hicache_server, long_pid, slow)
    assert started["tool_predicted_s"] >= 1.6
    assert started["tool_kv"] == "offload"
    assert (started["resident_tokens"], started["host_tokens"]) == (0, 560)
    kept = tool_hint(hicache_server, short_pid, quick)
    assert kept["tool_predicted_s"] < 1.0
    assert kept["tool_kv"] == "keep" and kept["resident_tokens"] > 0

    deadline = time.monotonic() + started["tool_predicted_s"] + 2
    while record(hicache_server, long_pid)["resident_tokens"] < 560:  # the prefetch, no call
        assert time.monotonic() < deadline, record(hicache_server, long_pid)
        time.sleep(0.05)
    again = generate(hicache_server, long_pid, prompt)
    assert again["output_ids"] == first["output_ids"]
    # every page but the last (SGLang matches at most len - 1 tokens) came from the device
    assert again["meta_info"]["cached_tokens_details"] == {"device": 544, "host": 0}
    after = prefetches(hicache_server)
    assert after["on_time"] == before.get("on_time", 0) + 1
    for pid in (long_pid, short_pid):
        requests.post(f"{hicache_server.url}/programs/release", headers=AUTH,
                      json={"program_id": pid}, timeout=30)
