"""Synthetic agent programs calibrated to published agent-serving statistics.

Pure and deterministic: a ``WorkloadSpec`` and a seed give the same programs,
token for token, on every machine. Prompts are token ids (the demo vocabulary
is 2048 tokens and the model's text is gibberish), so the tokens a call could
reuse from the cache are known exactly:

- every program starts with the same system prompt and tool schema (shared by
  all programs, as in a real fleet of one agent);
- then its task prompt (shared by the G samples of a GRPO group in rollouts);
- each turn appends the model's previous answer (the server's real output ids
  when played; deterministic stand-in ids in a written trace) and a tool output
  of a few hundred to a few thousand tokens (log-normal);
- answers are short (``output_tokens``, fixed, played with ignore_eos), so
  input:output stays far above 30:1;
- between calls the program waits for its tool: log-normal with a heavy tail.

Statistics behind the defaults (``../shared/docs/landscape.md``): SWE-bench
agents make ~10.9 calls (sd 2.1); a turn adds a few hundred to a few thousand
tokens; input:output ~131:1; 86% of follow-ups within 1 s and 95% within 10 s
with research/test tools up to minutes. Contexts are scaled down ~20x (a CPU
prefills ~2-3k tokens/s) and the tool-gap median up (a CPU call takes
seconds, so gaps stay 40-60% of a program's wall time as in the traces).

The ``tools`` preset (``preset_spec("tools", window_s)``) draws each gap from a named tool type
with its own distribution instead (``TOOL_TYPES``: editor calls short, test runs and searches
long; unscaled, at least 80% of gaps under 1 s, about 95% under 10 s, at least 1% over 240 s,
as in the traces), then scales every gap by one factor so that the longest possible one is a
third of the measurement window; the player names the tool in a tool hint before each gap, so
a tool's name carries information. The default preset is unchanged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import random

FIRST_TOKEN = 3  # ids 0-2 are the demo tokenizer's special tokens
VOCAB_SIZE = 2048


@dataclasses.dataclass(frozen=True)
class ToolType:
    """A kind of tool call: its share of gaps and its log-normal duration (seconds, clipped)."""

    name: str
    weight: float
    median_s: float
    sigma: float
    max_s: float


# Calibrated to ../shared/docs/landscape.md (unscaled: 82% of gaps under 1 s, 95% under 10 s,
# 1.2% over 240 s; checked by tests/unit/test_bench_workload.py).
TOOL_TYPES = (
    ToolType("edit", 0.575, 0.15, 0.6, 2.0),  # str_replace / file editor
    ToolType("view", 0.23, 0.3, 0.7, 5.0),  # cat / ls / open a file
    ToolType("grep", 0.12, 2.0, 0.9, 60.0),  # search the repository
    ToolType("pytest", 0.05, 8.0, 1.0, 600.0),  # run the tests
    ToolType("web_search", 0.025, 240.0, 0.8, 600.0),  # research tools
)
PRESETS = ("default", "tools")


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """The shape of a population of agent programs (defaults: CPU scale)."""

    system_prompt_tokens: int = 768  # system prompt and tool schema, shared by every program
    task_tokens_min: int = 128  # the task statement, per program (per group in rollouts)
    task_tokens_max: int = 384
    turns_mean: float = 8.0  # LLM calls per program, normal, clipped
    turns_sd: float = 2.0
    turns_min: int = 3
    turns_max: int = 14
    tool_output_median: int = 360  # tokens a tool adds per turn, log-normal, clipped
    tool_output_sigma: float = 0.7
    tool_output_min: int = 100
    tool_output_max: int = 2400
    output_tokens: int = 16  # max_tokens of every call (ignore_eos)
    tool_gap_median_s: float = 2.0  # tool time between calls, log-normal, clipped
    tool_gap_sigma: float = 1.1
    tool_gap_max_s: float = 60.0
    max_context_tokens: int = 12288  # a program ends before its prompt would pass this
    vocab_size: int = VOCAB_SIZE
    tool_types: tuple[ToolType, ...] = ()  # non-empty: gaps by named tool type (``tools``)
    tool_gap_scale: float = 1.0  # every tool type's gap times this

    def mean_context_tokens(self) -> float:
        """Expected prompt length of a program's last call (for sizing KV pools)."""
        tool = self.tool_output_median * math.exp(self.tool_output_sigma ** 2 / 2)
        task = (self.task_tokens_min + self.task_tokens_max) / 2
        return self.system_prompt_tokens + task + (self.turns_mean - 1) * (tool + self.output_tokens)


@dataclasses.dataclass(frozen=True)
class Call:
    """One LLM call of a program.

    ``new_tokens`` follow the previous call's prompt and answer (or, for the
    first call, start the prompt); ``tool_wait_s`` is the tool time before it.
    """

    new_tokens: tuple[int, ...]
    output_tokens: int
    tool_wait_s: float
    tool: str | None = None  # the tool of the wait before it (the ``tools`` preset)


@dataclasses.dataclass(frozen=True)
class Program:
    """An agent program: calls played in order, each after its tool wait.

    With ``carries_output`` the model's answer to each call is part of the next
    prompt (how agents work; our generator). Without it (a replayed foreign
    trace) each call's ``new_tokens`` is its whole prompt.
    """

    program_id: str
    calls: tuple[Call, ...]
    group: str | None = None  # GRPO group (shared task prompt) in rollouts
    carries_output: bool = True

    @property
    def turns(self) -> int:
        return len(self.calls)


def _rng(seed: int, *key: object) -> random.Random:
    """An independent, reproducible stream for one part of the workload."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def random_tokens(rng: random.Random, n: int, vocab_size: int = VOCAB_SIZE) -> tuple[int, ...]:
    return tuple(rng.randrange(FIRST_TOKEN, vocab_size) for _ in range(n))


def system_prompt(spec: WorkloadSpec, seed: int) -> tuple[int, ...]:
    """The system prompt and tool schema every program of this workload starts with."""
    return random_tokens(_rng(seed, "system"), spec.system_prompt_tokens, spec.vocab_size)


def task_prompt(spec: WorkloadSpec, seed: int, task: str) -> tuple[int, ...]:
    rng = _rng(seed, "task", task)
    return random_tokens(rng, rng.randint(spec.task_tokens_min, spec.task_tokens_max), spec.vocab_size)


def turns(spec: WorkloadSpec, rng: random.Random) -> int:
    n = round(rng.gauss(spec.turns_mean, spec.turns_sd))
    return min(spec.turns_max, max(spec.turns_min, n))


def tool_output_tokens(spec: WorkloadSpec, rng: random.Random) -> int:
    n = round(rng.lognormvariate(math.log(spec.tool_output_median), spec.tool_output_sigma))
    return min(spec.tool_output_max, max(spec.tool_output_min, n))


def tool_gap_s(spec: WorkloadSpec, rng: random.Random) -> float:
    gap = rng.lognormvariate(math.log(spec.tool_gap_median_s), spec.tool_gap_sigma)
    return round(min(spec.tool_gap_max_s, gap), 3)


def typed_tool_gap(spec: WorkloadSpec, rng: random.Random, scaled: bool = True) -> tuple[str, float]:
    """(tool name, gap seconds) from ``spec.tool_types``; ``scaled``: times the preset's factor."""
    tool = rng.choices(spec.tool_types, weights=[t.weight for t in spec.tool_types])[0]
    gap = min(tool.max_s, rng.lognormvariate(math.log(tool.median_s), tool.sigma))
    return tool.name, round(gap * (spec.tool_gap_scale if scaled else 1.0), 3)


def preset_spec(preset: str, window_s: float) -> WorkloadSpec:
    """The workload of a preset: ``default`` (today's), or ``tools`` scaled to ``window_s``."""
    if preset == "default":
        return WorkloadSpec()
    if preset == "tools":
        longest = max(t.max_s for t in TOOL_TYPES)
        return WorkloadSpec(tool_types=TOOL_TYPES,
                            tool_gap_scale=round(window_s / 3 / longest, 6))
    raise ValueError(f"unknown workload preset {preset!r}: use one of {', '.join(PRESETS)}")


def make_program(spec: WorkloadSpec, seed: int, program_id: str, task: str | None = None,
                 group: str | None = None) -> Program:
    """One program; ``task`` names its task prompt (default: its own id)."""
    rng = _rng(seed, "program", program_id)
    head = system_prompt(spec, seed) + task_prompt(spec, seed, task or program_id)
    calls = [Call(head, spec.output_tokens, 0.0)]
    context = len(head)
    for _ in range(turns(spec, rng) - 1):
        tool = random_tokens(rng, tool_output_tokens(spec, rng), spec.vocab_size)
        name, gap = typed_tool_gap(spec, rng) if spec.tool_types else (None, tool_gap_s(spec, rng))
        context += spec.output_tokens + len(tool)
        if context + spec.output_tokens > spec.max_context_tokens:
            break
        calls.append(Call(tool, spec.output_tokens, gap, name))
    return Program(program_id, tuple(calls), group=group)


def serving_program(spec: WorkloadSpec, seed: int, slot: int, index: int) -> Program:
    """The ``index``-th program played by serving slot ``slot`` (an endless, per-slot stream)."""
    return make_program(spec, seed, f"s{seed}-slot{slot}-p{index}")


def rollout_batch(spec: WorkloadSpec, seed: int, programs: int, group_size: int) -> list[Program]:
    """A GRPO-style batch: ``programs / group_size`` tasks, ``group_size`` samples each."""
    if programs % group_size:
        raise ValueError(f"a batch of {programs} programs does not split into groups of {group_size}")
    return [make_program(spec, seed, f"r{seed}-g{g}-s{s}", task=f"rollout-task-{g}", group=f"g{g}")
            for g in range(programs // group_size) for s in range(group_size)]


def chat_program(seed: int, slot: int, index: int) -> Program:
    """Plain multi-turn chat (no tools): 4-6 user turns of 40-120 tokens, 8-16-token replies."""
    spec = WorkloadSpec()
    rng = _rng(seed, "chat", slot, index)
    first = system_prompt(spec, seed)[:96] + random_tokens(rng, rng.randint(40, 120))
    calls = [Call(first, rng.randint(8, 16), 0.0)]
    for _ in range(rng.randint(3, 5)):
        calls.append(Call(random_tokens(rng, rng.randint(40, 120)), rng.randint(8, 16), 0.0))
    return Program(f"c{seed}-slot{slot}-p{index}", tuple(calls))


def stand_in_output(program: Program, turn: int, spec_vocab: int = VOCAB_SIZE) -> tuple[int, ...]:
    """Deterministic ids standing for the model's answer to ``turn`` in a written trace."""
    rng = _rng(0, "answer", program.program_id, turn)
    return random_tokens(rng, program.calls[turn].output_tokens, spec_vocab)


def prompts(program: Program, answers: list[tuple[int, ...]] | None = None) -> list[tuple[int, ...]]:
    """The whole prompt of each call, with ``answers`` (default: stand-ins) carried forward."""
    out: list[tuple[int, ...]] = []
    for t, call in enumerate(program.calls):
        if not program.carries_output or t == 0:
            out.append(call.new_tokens)
            continue
        answer = answers[t - 1] if answers is not None else stand_in_output(program, t - 1)
        out.append(out[-1] + tuple(answer) + call.new_tokens)
    return out
