"""Our layer must not change numerics: greedy output equals plain SGLang's."""

from __future__ import annotations

import pytest
import requests

pytestmark = pytest.mark.server

PROMPTS = [
    "You are a coding agent. Fix the failing test in utils.py.",
    "ls -la && cat README.md",
    "def add(a, b):\n    return a + b\n\n# tests",
    "Tool output: 3 passed, 1 failed (test_parse). Next step?",
]


def greedy_ids(server, prompt: str, headers=None) -> list[int]:
    reply = requests.post(f"{server.url}/generate", headers=headers, json={
        "text": prompt,
        "sampling_params": {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True},
        "return_logprob": False,
    }, timeout=120).json()
    return reply["output_ids"]


def chat_text(server, prompt: str) -> str:
    reply = requests.post(f"{server.url}/v1/chat/completions", json={
        "model": "demo", "messages": [{"role": "user", "content": prompt}],
        "temperature": 0, "max_tokens": 24,
    }, timeout=120).json()
    return reply["choices"][0]["message"]["content"]


def test_plain_server_runs_with_program_features_off(plain_server):
    log = plain_server.log()
    assert "program-aware features off (THUNDERAGENT_DISABLE=1, plain SGLang)" in log
    assert "program-aware features on" not in log


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_generate_matches_plain_sglang_token_for_token(default_server, plain_server, prompt):
    ours = greedy_ids(default_server, prompt)
    assert len(ours) == 24
    assert ours == greedy_ids(plain_server, prompt)


def test_program_tagged_calls_match_plain_sglang_token_for_token(default_server, plain_server):
    for i, prompt in enumerate(PROMPTS):
        tagged = greedy_ids(default_server, prompt, headers={"X-Program-Id": f"equal-{i}"})
        assert tagged == greedy_ids(plain_server, prompt)


def test_greedy_chat_matches_plain_sglang(default_server, plain_server):
    for prompt in PROMPTS:
        assert chat_text(default_server, prompt) == chat_text(plain_server, prompt)


def test_plain_server_leaks_no_kv_once_idle(plain_server):
    before = len(plain_server.idle_checks())
    greedy_ids(plain_server, "one more request " * 10)
    last = plain_server.last_idle_check_after(before)
    assert last["leak"] == "False"
    assert last["available"] + last["evictable"] == last["total"]
