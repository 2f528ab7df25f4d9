"""The launcher with no flags serves the demo model on a CPU through every API."""

from __future__ import annotations

import re
import openai
import pytest
import requests

pytestmark = pytest.mark.server

GREEDY = {"temperature": 0, "max_tokens": 8}


def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def test_generate_returns_the_requested_number_of_tokens(default_server):
    reply = requests.post(f"{default_server.url}/generate", json={
        "text": "The agent ran the tests and",
        "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True},
    }, timeout=120).json()
    assert reply["meta_info"]["completion_tokens"] == 8
    assert reply["meta_info"]["finish_reason"]["type"] == "length"
    assert isinstance(reply["text"], str) and reply["text"]


def test_chat_completion_answers_with_usage(default_server):
    reply = client(default_server).chat.completions.create(
        model="demo", messages=[{"role": "user", "content": "List the files."}], **GREEDY)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens > 0
    assert reply.choices[0].message.content


def test_streaming_chat_equals_non_streaming_chat(default_server):
    messages = [{"role": "user", "content": "Run pytest and report."}]
    whole = client(default_server).chat.completions.create(
        model="demo", messages=messages, **GREEDY).choices[0].message.content
    stream = client(default_server).chat.completions.create(
        model="demo", messages=messages, stream=True, **GREEDY)
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1  # it really streamed
    assert "".join(pieces) == whole


def test_completions_answer(default_server):
    reply = client(default_server).completions.create(
        model="demo", prompt="def main():", **GREEDY)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 8
    assert reply.choices[0].text


def test_plugin_runs_in_the_scheduler_subprocess(default_server):
    lines = re.findall(r"plugin active in (\w[\w -]*) process \(pid (\d+)\)", default_server.log())
    roles = {role: int(pid) for role, pid in lines}
    assert set(roles) == {"main", "scheduler", "detokenizer"}
    assert roles["main"] == default_server.proc.pid
    assert roles["scheduler"] in default_server.descendants()
    assert roles["scheduler"] != default_server.proc.pid


def test_launcher_logs_what_it_chose_for_a_cpu(default_server):
    log = default_server.log()
    for choice in ("SGLANG_USE_CPU_ENGINE=1", "--device cpu", "--sleep-on-idle",
                   "--max-total-tokens 65536", "--dtype float32"):
        assert f"ThunderAgent launcher: using {choice}" in log
    assert re.search(r"using --model-path \S+demo-models/llama-\w+ \(embedded demo model\)", log)
    assert "program-aware features on" in log


def test_no_kv_slot_leaks_once_idle(default_server):
    url = f"{default_server.url}/generate"
    before = len(default_server.idle_checks())
    for i in range(4):
        requests.post(url, json={"text": f"leak check {i} " * 20,
                                 "sampling_params": {"max_new_tokens": 4}}, timeout=120)
    last = default_server.last_idle_check_after(before)
    assert last["leak"] == "False"
    assert last["protected"] == 0 and last["session_held"] == 0 and last["uncached"] == 0
    assert last["available"] + last["evictable"] == last["total"] == 65536
    assert last["evictable"] > 0  # the prefixes of the finished requests stay cached
    assert "memory leak detected" not in default_server.log()


def test_decay_auto_follows_the_measured_decode_steps(default_server):
    """``--thunderagent-decay auto`` (the default): decode steps of 1 to 6 sequences are
    timed; each switch is logged, and after a tagged call's checks decay is what the rule
    makes of the fit the scheduler last read, from the state the last switch left."""
    from thunderagent_sglang.policy.batching import decay_wanted

    import concurrent.futures

    def burst(n: int) -> None:
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: requests.post(f"{default_server.url}/generate", json={
                "text": f"Step {i} of the agent's plan:",
                "sampling_params": {"max_new_tokens": 24, "temperature": 0,
                                    "ignore_eos": True}}, timeout=120), range(n)))

    for n in (1, 2, 3, 4, 5, 6, 3, 1):
        burst(n)
    assert requests.post(f"{default_server.url}/generate", headers={"X-Program-Id": "decay"},
                         json={"text": "check", "sampling_params": {"max_new_tokens": 2}},
                         timeout=120).status_code == 200
    sched = requests.get(f"{default_server.url}/programs", timeout=30).json()["scheduler"]
    fraction = sched["decode_shared_fraction"]
    assert sched["decode_steps_timed"] >= 64 and fraction is not None and 0 <= fraction <= 1
    switches = re.findall(r"ThunderAgent scheduler: decay (on|off): the batch shares",
                          default_server.log())
    assert len(switches) == sched["decay_switches"]
    before = switches[-1] == "on" if switches else True  # on until measured
    assert sched["decay"] is decay_wanted(fraction, before) is before
