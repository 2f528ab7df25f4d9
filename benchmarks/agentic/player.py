"""Plays agent programs against an OpenAI-compatible server over real HTTP.

Every call is ``POST /v1/completions`` with the prompt as a list of token ids,
``max_tokens`` fixed with ``ignore_eos`` (a random-weight model cannot stop
early) and ``return_token_ids`` (the answer's ids are carried into the next
prompt exactly, so cached-token counts are exact). A program's calls carry
``X-Program-Id`` and the program is released at its end (``POST
/programs/release``; the 404 of plain SGLang is ignored). Tool gaps are real
waits. Cached tokens come from ``usage.prompt_tokens_details.cached_tokens``
(servers run with ``--enable-cache-report``).

Chat mode (``text`` given; the runner's fleet mode, since every front serves chat): each call
is ``POST /v1/chat/completions``, the program's history as messages (its tool outputs and new
input as user messages, the model's answers as assistant messages, the text made from the
workload's token ids by the model's own detokenizer); cached tokens are counted the same way.

Modes: ``serve`` keeps N programs running (a finished one is replaced by the
slot's next program) until a deadline; ``rollout`` starts a batch at once and
waits for all of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Callable

import httpx
import orjson

from benchmarks.agentic.workload import Program

HTTP_TIMEOUT_S = 1800.0


@dataclasses.dataclass(frozen=True)
class CallRecord:
    program_id: str
    turn: int
    start_s: float  # seconds since the run started
    end_s: float
    prompt_tokens: int
    cached_tokens: int
    output_tokens: int


@dataclasses.dataclass(frozen=True)
class ProgramRecord:
    program_id: str
    start_s: float
    end_s: float
    calls: int


@dataclasses.dataclass
class Recorder:
    """What a run observed; times are seconds since ``t0`` (monotonic)."""

    t0: float = dataclasses.field(default_factory=time.monotonic)
    calls: list[CallRecord] = dataclasses.field(default_factory=list)
    programs: list[ProgramRecord] = dataclasses.field(default_factory=list)
    in_flight: int = 0

    def now(self) -> float:
        return time.monotonic() - self.t0


class Player:
    """One HTTP client for one server; ``call_fields`` go into every call's body."""

    def __init__(self, url: str, call_fields: dict | None = None, tagged: bool = True,
                 model: str = "default", text: Callable[[tuple[int, ...]], str] | None = None,
                 id_in_body: bool = False):
        self.url = url.rstrip("/")
        self.call_fields = dict(call_fields or {})
        self.tagged = tagged
        self.model = model
        self.text = text  # chat mode: token ids -> message text (the model's own detokenizer)
        self.id_in_body = id_in_body
        self.http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S,
                                      limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    async def aclose(self) -> None:
        await self.http.aclose()

    async def complete(self, prompt: list[int] | tuple[int, ...], max_tokens: int,
                       program_id: str | None = None) -> tuple[list[int], dict]:
        """One call: (answer token ids, usage)."""
        body = {"model": self.model, "prompt": list(prompt), "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True, "return_token_ids": True, **self.call_fields}
        headers = {"Content-Type": "application/json"}
        if program_id is not None:
            headers["X-Program-Id"] = program_id
        reply = await self.http.post(f"{self.url}/v1/completions", content=orjson.dumps(body),
                                     headers=headers)
        if reply.status_code != 200:
            raise RuntimeError(f"call of {program_id} answered {reply.status_code}: {reply.text[:300]}")
        data = orjson.loads(reply.content)
        return data["choices"][0]["token_ids"], data["usage"]

    async def chat(self, messages: list[dict], max_tokens: int,
                   program_id: str | None = None) -> tuple[str, dict]:
        """One chat call (fleet mode, as every front serves it): (answer text, usage)."""
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True, **self.call_fields}
        headers = {"Content-Type": "application/json"}
        if program_id is not None:
            if self.id_in_body:
                body["program_id"] = program_id
            else:
                headers["X-Program-Id"] = program_id
        reply = await self.http.post(f"{self.url}/v1/chat/completions",
                                     content=orjson.dumps(body), headers=headers)
        if reply.status_code != 200:
            raise RuntimeError(f"call of {program_id} answered {reply.status_code}: {reply.text[:300]}")
        data = orjson.loads(reply.content)
        return data["choices"][0]["message"]["content"] or "", data["usage"]

    async def tool_hint(self, program_id: str, tool: str) -> None:
        """Names the tool of the gap that starts now (404 on plain SGLang: ignored)."""
        reply = await self.http.post(f"{self.url}/programs/{program_id}/tool",
                                     json={"event": "start", "tool": tool})
        if reply.status_code not in (200, 404):
            raise RuntimeError(f"tool hint of {program_id} answered {reply.status_code}: "
                               f"{reply.text[:300]}")

    async def release(self, program_id: str) -> None:
        reply = await self.http.post(f"{self.url}/programs/release", json={"program_id": program_id})
        if reply.status_code not in (200, 404):  # 404: plain SGLang, or already ended
            raise RuntimeError(f"release of {program_id} answered {reply.status_code}: {reply.text[:300]}")

    async def play(self, program: Program, rec: Recorder) -> None:
        """Play one program to its end, recording each call, then release it."""
        pid = program.program_id if self.tagged else None
        start, prompt, answer, messages = rec.now(), (), None, []
        for turn, call in enumerate(program.calls):
            if call.tool is not None and pid is not None:
                await self.tool_hint(pid, call.tool)
            if call.tool_wait_s:
                await asyncio.sleep(call.tool_wait_s)
            if self.text is not None:
                if not (program.carries_output and turn):
                    messages = []
                elif answer is not None:
                    messages.append({"role": "assistant", "content": answer})
                messages.append({"role": "user", "content": self.text(call.new_tokens)})
            elif program.carries_output and turn:
                prompt = prompt + tuple(answer) + call.new_tokens
            else:
                prompt = call.new_tokens
            t = rec.now()
            rec.in_flight += 1
            try:
                if self.text is not None:
                    answer, usage = await self.chat(list(messages), call.output_tokens, pid)
                else:
                    answer, usage = await self.complete(prompt, call.output_tokens, pid)
            finally:
                rec.in_flight -= 1
            details = usage.get("prompt_tokens_details") or {}
            rec.calls.append(CallRecord(program.program_id, turn, t, rec.now(), usage["prompt_tokens"],
                                        details.get("cached_tokens") or 0, usage["completion_tokens"]))
        if pid is not None:
            await self.release(pid)
        rec.programs.append(ProgramRecord(program.program_id, start, rec.now(), program.turns))


async def _progress(rec: Recorder, label: str, every_s: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except asyncio.TimeoutError:
            print(f"  [{label}] {rec.now():6.0f}s  calls {len(rec.calls):5d}  programs done "
                  f"{len(rec.programs):4d}  in flight {rec.in_flight:3d}", flush=True)


async def serve(player: Player, next_program: Callable[[int, int], Program], concurrency: int,
                duration_s: float, label: str = "", progress_s: float = 15.0,
                stagger_s: float = 0.0) -> Recorder:
    """Keep ``concurrency`` programs running for ``duration_s``; slot k starts
    after ``k * stagger_s`` (so programs do not all start in step) and plays
    ``next_program(k, 0)``, ``next_program(k, 1)``, ... Calls still in flight at
    the deadline are abandoned (their connections closed) and not recorded."""
    rec, stop = Recorder(), asyncio.Event()

    async def slot(k: int) -> None:
        await asyncio.sleep(k * stagger_s)
        index = 0
        while True:
            await player.play(next_program(k, index), rec)
            index += 1

    tasks = [asyncio.create_task(slot(k)) for k in range(concurrency)]
    ticker = asyncio.create_task(_progress(rec, label, progress_s, stop))
    done, _ = await asyncio.wait(tasks, timeout=duration_s, return_when=asyncio.FIRST_EXCEPTION)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, ticker, return_exceptions=True)
    for task in done:  # a slot only ends early by an error: report it
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()
    return rec


async def rollout(player: Player, batch: list[Program], label: str = "",
                  progress_s: float = 15.0) -> Recorder:
    """Start every program of ``batch`` at once; return when the last one ends."""
    rec, stop = Recorder(), asyncio.Event()
    ticker = asyncio.create_task(_progress(rec, label, progress_s, stop))
    try:
        await asyncio.gather(*(player.play(p, rec) for p in batch))
    finally:
        stop.set()
        await ticker
    return rec
