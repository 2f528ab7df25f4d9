"""The README's client examples, run against a real server."""

from __future__ import annotations

import asyncio

import openai
import pytest
import requests
import sglang as sgl

from thunderagent_sglang.client import AsyncProgram, Program, program_endpoint

pytestmark = pytest.mark.server


def record(server, program_id):
    return requests.get(f"{server.url}/programs/{program_id}", timeout=30).json()


def test_openai_program_tags_every_call_and_ends_with_the_final_marker(default_server):
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
    with Program(client, "readme-openai") as p:
        p.client.chat.completions.create(model="demo", max_tokens=4,
                                         messages=[{"role": "user", "content": "plan"}])
        p.client.chat.completions.create(model="demo", max_tokens=4,
                                         messages=[{"role": "user", "content": "done"}],
                                         extra_headers=p.final_call_headers())
    rec = record(default_server, "readme-openai")
    assert rec["steps"] == 2 and rec["status"] == "terminated" and rec["release_cause"] == "final"


def test_openai_program_releases_on_exit(default_server):
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
    with Program(client) as p:
        p.client.completions.create(model="demo", prompt="x", max_tokens=2)
        pid = p.program_id
    rec = record(default_server, pid)
    assert rec["steps"] == 1 and rec["release_cause"] == "explicit"


def test_async_program_releases_on_exit(default_server):
    async def run() -> str:
        client = openai.AsyncOpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
        async with AsyncProgram(client) as p:
            await p.client.chat.completions.create(
                model="demo", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
            return p.program_id

    rec = record(default_server, asyncio.run(run()))
    assert rec["steps"] == 1 and rec["release_cause"] == "explicit"


@sgl.function
def two_turns(s, question):
    s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=4, temperature=0)
    s += "\nQ: and then?\nA:" + sgl.gen("more", max_tokens=4, temperature=0)


def test_sglang_frontend_function_runs_as_one_program(default_server):
    backend = sgl.RuntimeEndpoint(default_server.url)
    with program_endpoint(backend, "readme-frontend") as tagged_backend:
        state = two_turns.run(question="which tests fail?", backend=tagged_backend)
        assert state["answer"] is not None and state["more"] is not None
        rec = record(default_server, "readme-frontend")
        assert rec["steps"] >= 2 and rec["decode_tokens"] >= 8 and rec["status"] == "active"
    assert record(default_server, "readme-frontend")["release_cause"] == "explicit"
