"""The README's agent-framework examples against the shared demo server. mini-swe-agent runs a
few steps through litellm (with random weights every answer is a format error, which still
sends the client's real requests with a growing history) as one tracked, released program; an
OpenAI Agents SDK run is one program and a subagent's run its child; a LangGraph run is one
program."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
import requests

from tests.integration.server import REPO

pytestmark = pytest.mark.server


def example(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mini_swe_agent_runs_as_one_tracked_program_and_is_released(default_server, tmp_path):
    mini = example("mini_swe_agent")
    url, pid = default_server.url, "mini-swe-ci"
    agent = mini.make_agent(url, pid, steps=3, workdir=str(tmp_path))
    seen = []
    query = agent.model.query

    def observed(*args, **kwargs):  # the program's record after each of the agent's calls
        try:
            return query(*args, **kwargs)
        finally:
            seen.append(requests.get(f"{url}/programs/{pid}", timeout=10).json())
    agent.model.query = observed
    result = agent.run("Count the files in this directory.")
    assert result["exit_status"] == "LimitsExceeded" and agent.n_calls == 3
    assert [r["steps"] for r in seen] == [1, 2, 3]
    cached = [r["prefill_tokens_cached"] for r in seen]
    totals = [r["prefill_tokens_cached"] + r["prefill_tokens_computed"] for r in seen]
    prompts = [totals[0], totals[1] - totals[0], totals[2] - totals[1]]
    assert prompts[0] < prompts[1] < prompts[2]  # each call sends the grown history
    assert cached[0] < cached[1] < cached[2]  # and reuses it from the cache
    assert all(m["role"] != "tool" for m in agent.messages)  # no action ran
    record = mini.release(url, pid)
    assert (record["status"], record["release_cause"], record["steps"]) == (
        "terminated", "explicit", 3)
    live = requests.get(f"{url}/programs", params={"live": "1"}, timeout=10).json()
    assert pid not in {r["program_id"] for r in live["programs"]}


def record(url: str, pid: str) -> dict:
    return requests.get(f"{url}/programs/{pid}", timeout=10).json()


def test_an_agents_sdk_run_is_one_program_and_a_subagents_run_its_child(default_server):
    sdk = example("openai_agents_sdk")
    url, parent, child = default_server.url, "sdk-planner", "sdk-planner/researcher"
    llm = sdk.model(url)
    planner = sdk.Agent(name="planner", model=llm, instructions="Plan in three steps.")
    researcher = sdk.Agent(name="researcher", model=llm, instructions="Answer briefly.")

    async def both():  # one event loop: the SDK's client keeps its connections in it
        plan = await sdk.run_program(planner, "Plan a fix.", url, parent)
        return plan, await sdk.run_program(researcher, "Research it.", url, child,
                                           parent_id=parent)
    plan, facts = asyncio.run(both())
    first, second = record(url, parent), record(url, child)
    assert (first["parent_id"], first["steps"], first["release_cause"]) == (
        None, len(plan.raw_responses), "explicit")
    assert (second["parent_id"], second["steps"], second["release_cause"]) == (
        parent, len(facts.raw_responses), "explicit")
    assert first["status"] == second["status"] == "terminated"


def test_a_langgraph_run_is_one_program_released_at_its_end(default_server):
    graph = example("langgraph_agent")
    url, pid = default_server.url, "langgraph-ci"
    state = graph.run(url, "How many words are in 'a b c'?", pid)
    model_calls = sum(1 for m in state["messages"] if m.type == "ai")
    assert model_calls >= 1
    assert (record(url, pid)["steps"], record(url, pid)["release_cause"]) == (
        model_calls, "explicit")
