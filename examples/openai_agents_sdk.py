"""The OpenAI Agents SDK against ThunderAgent-SGLang: one run is one LLM program, and a
subagent's run is a child program. The program id rides every call of a run as the
X-Program-Id header (``ModelSettings.extra_headers`` in the run's ``RunConfig``); a subagent's
run sends its own id plus the parent's in ``x-parent-session-id``, so the server records the
tree. Each program is released when its run ends.

    .venv/bin/python examples/openai_agents_sdk.py --server http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

import httpx
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    RunConfig,
    Runner,
    set_tracing_disabled,
)
from openai import AsyncOpenAI

set_tracing_disabled(True)  # the SDK's traces go to OpenAI's platform otherwise


def model(server: str, name: str = "demo", api_key: str = "none") -> OpenAIChatCompletionsModel:
    client = AsyncOpenAI(base_url=f"{server}/v1", api_key=api_key, max_retries=0)
    return OpenAIChatCompletionsModel(model=name, openai_client=client)


def tagged(program_id: str, parent_id: str | None = None, max_tokens: int = 64) -> RunConfig:
    """A run's settings: every call of the run carries its program id (and its parent's)."""
    headers = {"X-Program-Id": program_id}
    if parent_id is not None:
        headers["x-parent-session-id"] = parent_id
    return RunConfig(model_settings=ModelSettings(extra_headers=headers, max_tokens=max_tokens,
                                                  temperature=0))


async def release(server: str, program_id: str, api_key: str = "none") -> dict:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{server}/programs/{program_id}/release",
                                     headers={"Authorization": f"Bearer {api_key}"})
    return response.json()


async def run_program(agent: Agent, task: str, server: str, program_id: str,
                      parent_id: str | None = None, max_turns: int = 4):
    """One run of ``agent`` as program ``program_id`` (a child of ``parent_id``), released at
    the end."""
    try:
        return await Runner.run(agent, task, run_config=tagged(program_id, parent_id),
                                max_turns=max_turns)
    finally:
        await release(server, program_id)


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:30000")
    p.add_argument("--model", default="demo")
    args = p.parse_args()
    llm = model(args.server, args.model)
    researcher = Agent(name="researcher", model=llm,
                       instructions="Find the facts the planner asks for; answer briefly.")
    planner = Agent(name="planner", model=llm,
                    instructions="Plan the work in three steps, then ask the researcher.")
    parent = f"planner-{uuid.uuid4().hex[:8]}"
    plan = await run_program(planner, "Plan a fix for a failing unit test.", args.server, parent)
    # the subagent's run: a child program of the planner's
    child = f"{parent}/researcher"
    facts = await run_program(researcher, f"Research this plan: {plan.final_output}",
                              args.server, child, parent_id=parent)
    print(f"{parent}: {plan.final_output!r}\n{child}: {facts.final_output!r}")


if __name__ == "__main__":
    asyncio.run(main())
