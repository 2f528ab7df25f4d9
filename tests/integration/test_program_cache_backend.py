"""``--radix-cache-backend thunderagent`` builds our cache on the Python tree core and caches."""

from __future__ import annotations

import re

import pytest
import requests

from tests.integration.server import Server

pytestmark = pytest.mark.server

TREE_CACHE_LINE = re.compile(r"Tree cache initialized: source=(\S+) impl=(\w+) .*hicache_attached=(\w+)")
TREE_CORE_LINE = re.compile(r"Init Unified Radix Cache\. .*Tree Core: (\w+)")
PROMPT = list(range(3, 203))  # 200 token ids


@pytest.fixture(scope="module")
def backend_server(request, tmp_path_factory):
    server = Server(
        "program-cache",
        ["--radix-cache-backend", "thunderagent", "--enable-cache-report"],
        {"THUNDERAGENT_CACHE_BACKEND": "1"},
        tmp_path_factory.mktemp("program-cache"),
    )
    request.addfinalizer(server.stop)
    return server.wait_ready()


def generate(server, ids: list[int]) -> dict:
    return requests.post(f"{server.url}/generate", json={
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True},
    }, timeout=120).json()


def test_the_scheduler_builds_our_cache_class_from_the_registry(backend_server):
    assert TREE_CACHE_LINE.findall(backend_server.log()) == [
        ("registered('thunderagent')", "ProgramRadixCache", "False")]


def test_our_cache_runs_on_the_python_tree_core(backend_server):
    assert TREE_CORE_LINE.findall(backend_server.log()) == ["UnifiedTreeCore"]


def test_a_repeated_prompt_reports_its_cached_tokens(backend_server):
    first = generate(backend_server, PROMPT)
    again = generate(backend_server, PROMPT)
    assert first["meta_info"]["cached_tokens"] == 0
    # Page size 1: every prompt token but the last, which is always recomputed.
    assert again["meta_info"]["cached_tokens"] == len(PROMPT) - 1
    assert again["output_ids"] == first["output_ids"]


def test_no_kv_slot_leaks_after_traffic(backend_server):
    before = len(backend_server.idle_checks())
    generate(backend_server, list(range(300, 420)))
    last = backend_server.last_idle_check_after(before)
    assert last["leak"] == "False"
    assert last["available"] + last["evictable"] == last["total"]
