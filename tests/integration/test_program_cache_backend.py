"""Our radix-cache backend is selected by default, runs on the Python tree core, and caches.

The default server (no flags) and the HiCache server both run it; plain SGLang does not.
"""

from __future__ import annotations

import re

import pytest
import requests

pytestmark = pytest.mark.server

TREE_CACHE_LINE = re.compile(r"Tree cache initialized: source=(\S+) impl=(\w+) .*hicache_attached=(\w+)")
TREE_CORE_LINE = re.compile(r"Init Unified Radix Cache\. .*Tree Core: (\w+)")
PROMPT = list(range(3, 203))  # 200 token ids


def generate(server, ids: list[int]) -> dict:
    return requests.post(f"{server.url}/generate", json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }, timeout=120).json()


def test_the_scheduler_builds_our_cache_class_from_the_registry(default_server):
    assert TREE_CACHE_LINE.findall(default_server.log()) == [
        ("registered('thunderagent')", "ProgramRadixCache", "False")]
    assert "using --radix-cache-backend thunderagent" in default_server.log()


def test_our_cache_runs_on_the_python_tree_core(default_server):
    assert TREE_CORE_LINE.findall(default_server.log()) == ["ProgramTreeCore"]


def test_our_cache_hosts_hicache(hicache_server):
    assert TREE_CACHE_LINE.findall(hicache_server.log()) == [
        ("registered('thunderagent')", "ProgramRadixCache", "True")]


def test_plain_sglang_keeps_its_default_cache(plain_server):
    (source, impl, _), = TREE_CACHE_LINE.findall(plain_server.log())
    assert impl == "UnifiedRadixCache" and "thunderagent" not in source
    assert TREE_CORE_LINE.findall(plain_server.log()) == ["RustUnifiedTreeCore"]


def test_a_repeated_prompt_reports_its_cached_tokens(default_server):
    first = generate(default_server, PROMPT)
    again = generate(default_server, PROMPT)
    assert first["meta_info"]["cached_tokens"] == 0
    # Page size 1: every prompt token but the last, which is always recomputed.
    assert again["meta_info"]["cached_tokens"] == len(PROMPT) - 1
    assert again["output_ids"] == first["output_ids"]


def test_no_kv_slot_leaks_after_traffic(default_server):
    before = len(default_server.idle_checks())
    generate(default_server, list(range(300, 420)))
    last = default_server.last_idle_check_after(before)
    assert last["leak"] == "False"
    assert last["available"] + last["evictable"] == last["total"]
