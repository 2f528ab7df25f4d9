"""Demonstration: an acting program's prefix survives a flood of untagged work.

Three small-pool servers run the same scenario one after another (one server
alive at a time): ours, plain SGLang with its LRU, and plain SGLang with its own
`priority` eviction policy and the program's calls at high priority.
"""

from __future__ import annotations

import random

import pytest
import requests

from tests.integration.server import Server

pytestmark = pytest.mark.server

SMALL_POOL = ["--max-total-tokens", "1024", "--context-length", "1024", "--enable-cache-report"]
CONFIGS = {
    "ours": (SMALL_POOL, {}, {}),
    "plain-lru": (SMALL_POOL, {"THUNDERAGENT_DISABLE": "1"}, {}),
    "plain-priority": ([*SMALL_POOL, "--radix-eviction-policy", "priority",
                        "--enable-priority-scheduling"],
                       {"THUNDERAGENT_DISABLE": "1"}, {"priority": 10}),
}
PROMPT_TOKENS, OUTPUT_TOKENS = 300, 4


def generate(server, ids, headers=None, extra=None):
    return requests.post(f"{server.url}/generate", headers=headers, json={
        "input_ids": ids, **(extra or {}),
        "sampling_params": {"max_new_tokens": OUTPUT_TOKENS, "temperature": 0, "ignore_eos": True},
    }, timeout=120).json()


def flood_scenario(server, program_extra) -> dict:
    rng = random.Random(3)
    prompt = [rng.randrange(3, 2048) for _ in range(PROMPT_TOKENS)]
    headers = {"X-Program-Id": "survivor"}
    first = generate(server, prompt, headers, program_extra)
    for _ in range(6):  # 6 x 304 tokens of untagged work in a 1024-token pool
        generate(server, [rng.randrange(3, 2048) for _ in range(PROMPT_TOKENS)])
    again = generate(server, prompt + first["output_ids"] + [5, 6, 7], headers, program_extra)
    leak = server.last_idle_check_after(len(server.idle_checks()) - 1)
    return {"cached": again["meta_info"]["cached_tokens"], "leak": leak}


def terminated_first_scenario(server) -> dict:
    """400-token calls: 'keep' (acting), then 'done' (ends with a final marker), then untagged."""
    requests.post(f"{server.url}/flush_cache", timeout=60).raise_for_status()
    rng = random.Random(11)
    keep, done = ([rng.randrange(3, 2048) for _ in range(400)] for _ in range(2))
    out = generate(server, keep, {"X-Program-Id": "keep"})["output_ids"]
    generate(server, done, {"X-Program-Id": "done", "X-Program-Final": "1"})
    generate(server, [rng.randrange(3, 2048) for _ in range(400)])  # needs room: evicts
    keep_again = generate(server, keep + out + [9], {"X-Program-Id": "keep"})
    done_again = generate(server, done, {"X-Program-Id": "done"})
    return {"keep": keep_again["meta_info"]["cached_tokens"],
            "done": done_again["meta_info"]["cached_tokens"]}


def no_wedge_scenario(server) -> dict:
    """Three acting programs fill the pool; untagged work must still run."""
    requests.post(f"{server.url}/flush_cache", timeout=60).raise_for_status()
    rng = random.Random(13)
    for i in range(3):
        generate(server, [rng.randrange(3, 2048) for _ in range(300)], {"X-Program-Id": f"p{i}"})
    reply = generate(server, [rng.randrange(3, 2048) for _ in range(500)])
    leak = server.last_idle_check_after(len(server.idle_checks()) - 1)
    return {"completion_tokens": reply["meta_info"]["completion_tokens"], "leak": leak}


def untagged_chat_scenario(server) -> dict:
    """Six interleaved untagged 5-turn chats (~2300 tokens in all) in a 1024-token pool."""
    requests.post(f"{server.url}/flush_cache", timeout=60).raise_for_status()
    rng = random.Random(17)
    chats = [[rng.randrange(3, 2048) for _ in range(60)] for _ in range(6)]
    cached, reusable = [], []
    for _ in range(5):
        for history in chats:
            reusable.append(len(history) - 1 if len(history) > 60 else 0)
            history += [rng.randrange(3, 2048) for _ in range(60)]
            reply = generate(server, history)
            cached.append(reply["meta_info"]["cached_tokens"])
            history += reply["output_ids"]
    return {"cached": cached, "reusable": reusable}


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    results = {}
    for name, (args, env, extra) in CONFIGS.items():
        server = Server(f"evict-{name}", args, env, tmp_path_factory.mktemp(name))
        try:
            results[name] = flood_scenario(server.wait_ready(), extra)
            if name in ("ours", "plain-lru"):
                results[name]["chat"] = untagged_chat_scenario(server)
            if name == "ours":
                results["terminated-first"] = terminated_first_scenario(server)
                results["no-wedge"] = no_wedge_scenario(server)
            results[name]["log"] = server.log()
        finally:
            server.stop()
    return results


WHOLE_PREVIOUS_SEQUENCE = PROMPT_TOKENS + OUTPUT_TOKENS - 1  # the last output token has no KV


def test_ours_keeps_the_acting_programs_whole_previous_sequence(figures):
    assert figures["ours"]["cached"] == WHOLE_PREVIOUS_SEQUENCE


def test_plain_lru_loses_it_to_the_flood(figures):
    assert figures["plain-lru"]["cached"] == 0


def test_sglang_priority_policy_with_high_priority_calls_also_keeps_it(figures):
    assert figures["plain-priority"]["cached"] == WHOLE_PREVIOUS_SEQUENCE


def test_a_terminated_programs_kv_goes_before_an_active_ones(figures):
    # 'keep' is older, so LRU would take it first; ours takes the ended program's KV.
    assert figures["terminated-first"]["keep"] == 400 + OUTPUT_TOKENS - 1
    assert figures["terminated-first"]["done"] < 400 - 1


def test_untagged_multi_turn_chat_keeps_exactly_plain_sglangs_prefix_hits(figures):
    ours, plain = figures["ours"]["chat"], figures["plain-lru"]["chat"]
    assert ours["cached"] == plain["cached"]
    # The pool really was under pressure: some calls hit, some lost part of their history.
    pairs = list(zip(plain["cached"], plain["reusable"]))
    assert any(0 < c == r for c, r in pairs) and any(c < r for c, r in pairs)


def test_protected_programs_never_wedge_the_pool(figures):
    assert figures["no-wedge"]["completion_tokens"] == OUTPUT_TOKENS
    assert figures["no-wedge"]["leak"]["leak"] == "False"


def test_no_kv_slot_leaks_in_any_configuration(figures):
    for name in CONFIGS:
        result = figures[name]
        assert result["leak"]["leak"] == "False", name
        assert result["leak"]["available"] + result["leak"]["evictable"] == 1024, name


def test_our_server_ranks_with_our_strategy(figures):
    assert "using --radix-cache-backend thunderagent" in figures["ours"]["log"]
