"""SGLang's host KV tier (HiCache) works on a CPU, with page size 16 and chunked prefill."""

from __future__ import annotations

import random

import pytest
import requests

from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.server

AUTH = {"Authorization": f"Bearer {API_KEY}"}
PROMPT_TOKENS = 300  # the device pool holds 1024 tokens: four more prompts flood it


def generate(server, ids: list[int]) -> dict:
    return requests.post(f"{server.url}/generate", json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
    }, headers=AUTH, timeout=120).json()


def test_flooded_prefix_comes_back_from_host_memory_with_identical_output(hicache_server):
    rng = random.Random(7)
    prompt = [rng.randrange(3, 2048) for _ in range(PROMPT_TOKENS)]
    first = generate(hicache_server, prompt)
    assert first["meta_info"]["cached_tokens"] == 0
    for _ in range(5):  # 5 x 308 tokens > 1024: the prompt leaves the device pool
        generate(hicache_server, [rng.randrange(3, 2048) for _ in range(PROMPT_TOKENS)])
    again = generate(hicache_server, prompt)
    # Whole pages of the prompt (300 // 16 * 16), all of them from host memory.
    assert again["meta_info"]["cached_tokens_details"] == {"device": 0, "host": 288}
    assert again["output_ids"] == first["output_ids"]


def test_server_runs_with_the_requested_page_size_and_chunking(hicache_server):
    info = requests.get(f"{hicache_server.url}/get_server_info", headers=AUTH, timeout=30).json()
    assert info["page_size"] == 16
    assert info["chunked_prefill_size"] == 64
    assert info["enable_hierarchical_cache"] is True


def test_no_kv_slot_leaks_after_host_tier_traffic(hicache_server):
    before = len(hicache_server.idle_checks())
    generate(hicache_server, list(range(3, 203)))
    last = hicache_server.last_idle_check_after(before)
    assert last["leak"] == "False"
    assert last["available"] + last["evictable"] == last["total"] == 1024
