"""The benchmark's agent-program generator and its replayable trace format (no server)."""

from __future__ import annotations

import json
import random
import math
import statistics

import pytest

from benchmarks.agentic import trace, workload
from benchmarks.agentic.workload import (
    Call, Program, WorkloadSpec, chat_program, prompts, rollout_batch, serving_program, system_prompt,
)

SPEC = WorkloadSpec()
SEED = 7


@pytest.fixture(scope="module")
def population() -> list[Program]:
    return [serving_program(SPEC, SEED, slot, i) for slot in range(10) for i in range(100)]


def test_same_seed_gives_identical_programs_and_another_seed_different_ones():
    assert serving_program(SPEC, SEED, 3, 4) == serving_program(SPEC, SEED, 3, 4)
    assert serving_program(SPEC, SEED, 3, 4).calls != serving_program(SPEC, SEED + 1, 3, 4).calls
    assert serving_program(SPEC, SEED, 3, 4).calls != serving_program(SPEC, SEED, 3, 5).calls


def test_every_program_starts_with_the_one_shared_system_prompt_then_its_own_task(population):
    head = system_prompt(SPEC, SEED)
    assert len(head) == SPEC.system_prompt_tokens == 768
    firsts = [p.calls[0].new_tokens for p in population]
    assert all(f[:768] == head for f in firsts)
    tasks = {f[768:] for f in firsts}
    assert len(tasks) == len(population)  # no two programs share a task
    assert all(SPEC.task_tokens_min <= len(t) <= SPEC.task_tokens_max for t in tasks)


def test_each_call_extends_the_previous_prompt_and_answer(population):
    program = population[0]
    whole = prompts(program)
    for t in range(1, program.turns):
        previous = whole[t - 1]
        assert whole[t][:len(previous)] == previous
        assert len(whole[t]) == len(previous) + SPEC.output_tokens + len(program.calls[t].new_tokens)


def test_every_call_has_at_least_30_input_tokens_per_output_token(population):
    ratios = [len(prompt) / call.output_tokens
              for p in population for prompt, call in zip(prompts(p), p.calls)]
    assert min(ratios) >= 30
    assert all(c.output_tokens == 16 for p in population for c in p.calls)


def test_turns_follow_the_configured_normal_within_bounds(population):
    turns = [p.turns for p in population]
    assert min(turns) >= SPEC.turns_min and max(turns) <= SPEC.turns_max
    assert abs(statistics.mean(turns) - SPEC.turns_mean) < 0.2
    assert abs(statistics.pstdev(turns) - SPEC.turns_sd) < 0.25


def test_contexts_stay_under_the_cap_and_tool_outputs_in_their_range(population):
    assert max(len(prompts(p)[-1]) for p in population) + SPEC.output_tokens <= SPEC.max_context_tokens
    sizes = [len(c.new_tokens) for p in population for c in p.calls[1:]]
    assert min(sizes) >= SPEC.tool_output_min and max(sizes) <= SPEC.tool_output_max
    assert abs(statistics.median(sizes) / SPEC.tool_output_median - 1) < 0.05


def test_tool_gaps_are_log_normal_with_a_heavy_tail(population):
    gaps = [c.tool_wait_s for p in population for c in p.calls[1:]]
    assert all(p.calls[0].tool_wait_s == 0 for p in population)
    logs = [math.log(g) for g in gaps]
    assert abs(statistics.mean(logs) - math.log(SPEC.tool_gap_median_s)) < 0.05
    assert abs(statistics.pstdev(logs) - SPEC.tool_gap_sigma) < 0.05
    assert max(gaps) <= SPEC.tool_gap_max_s
    # Heavy tail: the 99th percentile is >10x the median (a normal with this spread would be ~3x).
    assert statistics.quantiles(gaps, n=100)[98] > 10 * statistics.median(gaps)


def test_rollout_groups_share_their_task_prompt_and_only_it():
    batch = rollout_batch(SPEC, SEED, programs=8, group_size=4)
    assert [p.group for p in batch] == ["g0"] * 4 + ["g1"] * 4
    firsts = [p.calls[0].new_tokens for p in batch]
    assert len(set(firsts[:4])) == 1 and len(set(firsts[4:])) == 1 and firsts[0] != firsts[4]
    assert batch[0].calls[1:] != batch[1].calls[1:]  # samples diverge after the task
    with pytest.raises(ValueError, match="groups of 3"):
        rollout_batch(SPEC, SEED, programs=8, group_size=3)


def test_chat_programs_have_no_tool_waits():
    program = chat_program(SEED, 0, 0)
    assert 4 <= program.turns <= 6
    assert all(c.tool_wait_s == 0 for c in program.calls)


def test_hash_ids_are_shared_exactly_for_shared_blocks():
    x, y = tuple(range(3, 1027)), tuple(range(1027, 1539))
    a = Program("a", (Call(x, 16, 0.0), Call(y, 16, 1.5)))
    b = Program("b", (Call(x[:512] + y, 8, 0.0),))
    rows = trace.to_rows([a, b], block_size=512)
    # a: 1024 tokens = 2 blocks; then 1024 + 16 (stand-in answer) + 512 = 1552 = 3 full + 16
    assert [r["hash_ids"] for r in rows] == [[0, 1], [0, 1, 2, 3], [0, 4]]
    assert [r["input_length"] for r in rows] == [1024, 1552, 1024]
    assert rows[0]["timestamp"] == 0 and "delay" not in rows[0]
    assert rows[1]["delay"] == rows[1]["tool_wait_ms"] == 1500
    assert rows[2]["output_length"] == 8


def test_trace_round_trip_keeps_sessions_lengths_waits_and_prefix_structure(tmp_path, population):
    programs = population[:20] + rollout_batch(SPEC, SEED, programs=4, group_size=2)
    path = tmp_path / "trace.jsonl"
    assert trace.write(path, programs, block_size=64) == sum(p.turns for p in programs)
    rows = trace.read_rows(path)
    replayed = trace.read(path, block_size=64)
    assert [p.program_id for p in replayed] == [p.program_id for p in programs]
    assert [c.tool_wait_s for p in replayed for c in p.calls] == \
        [round(c.tool_wait_s, 3) for p in programs for c in p.calls]
    # Rebuilt prompts have the written lengths and the same block structure: writing them
    # again gives the same rows, hash ids included.
    assert trace.to_rows(replayed, block_size=64) == rows
    assert all(not p.carries_output for p in replayed)


def test_foreign_rows_without_sessions_or_with_delay_only_are_read(tmp_path):
    path = tmp_path / "foreign.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [0, 1]},
        {"session_id": "x", "input_length": 300, "output_length": 4, "hash_ids": [2]},
        {"session_id": "x", "input_length": 600, "output_length": 4, "hash_ids": [2, 3], "delay": 250},
    ]) + "\n")
    programs = trace.read(path, block_size=512)
    assert [(p.program_id, [len(c.new_tokens) for c in p.calls]) for p in programs] == \
        [("row-0", [700]), ("x", [300, 600])]
    assert programs[1].calls[1].tool_wait_s == 0.25
    assert programs[1].calls[1].new_tokens[:300] == programs[1].calls[0].new_tokens


def test_a_wrong_block_size_is_reported():
    with pytest.raises(ValueError, match="block size"):
        trace.rebuild_prompt({"session_id": "x", "input_length": 700, "hash_ids": [0, 1]}, 256)


def test_the_tools_preset_matches_the_published_gap_statistics_before_scaling():
    spec = workload.preset_spec("tools", window_s=300)
    rng = random.Random(7)
    draws = [workload.typed_tool_gap(spec, rng, scaled=False) for _ in range(40000)]
    gaps = [g for _, g in draws]
    share = lambda f: sum(map(f, gaps)) / len(gaps)  # noqa: E731
    assert share(lambda g: g < 1) >= 0.80
    assert 0.93 <= share(lambda g: g < 10) <= 0.97
    assert share(lambda g: g > 240) >= 0.01
    by_tool: dict[str, list[float]] = {}
    for name, gap in draws:
        by_tool.setdefault(name, []).append(gap)
    medians = {name: statistics.median(v) for name, v in by_tool.items()}
    assert medians["edit"] < medians["view"] < 1 < medians["grep"] < medians["pytest"] < medians[
        "web_search"]


def test_the_tools_preset_scales_every_gap_to_a_third_of_the_window_at_most():
    spec = workload.preset_spec("tools", window_s=300)
    assert spec.tool_gap_scale == round(100 / 600, 6)
    programs = [workload.serving_program(spec, 0, slot, 0) for slot in range(200)]
    calls = [c for p in programs for c in p.calls[1:]]
    assert {c.tool for c in calls} == {t.name for t in workload.TOOL_TYPES}
    assert max(c.tool_wait_s for c in calls) <= 100
    assert all(p.calls[0].tool is None and p.calls[0].tool_wait_s == 0 for p in programs)


def test_the_default_preset_is_todays_workload():
    assert workload.preset_spec("default", 300) == workload.WorkloadSpec()
    program = workload.serving_program(workload.WorkloadSpec(), 0, 0, 0)
    assert all(c.tool is None for c in program.calls)
    with pytest.raises(ValueError, match="unknown workload preset 'nope'"):
        workload.preset_spec("nope", 300)
