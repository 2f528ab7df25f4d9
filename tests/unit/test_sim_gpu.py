"""The GPU step-cost model (``sim/gpu_cost.py``): exact interpolation on constructed tables,
the composition of one step, and the committed tables' order of magnitude against the one
end-to-end measurement aiconfigurator has for this model (TRT-LLM, not fitted)."""

from __future__ import annotations

import pytest

from sim.gpu_cost import GpuStepCost, Grid2, loglog

MODEL = {"name": "tiny", "layers": 2, "hidden": 4, "heads_per_gpu": 1, "kv_heads_per_gpu": 1,
         "head_dim": 2, "experts": 2, "topk": 1, "moe_inter": 4, "vocab": 16, "tp": 2}


def flat(value: float, columns: int) -> list[list[float]]:
    """A table that reads ``value`` everywhere (two points per axis)."""
    if columns == 2:
        return [[1.0, value], [1e6, value]]
    return [[a, b, value] for a in (1.0, 1e6) for b in (1.0, 1e6)]


def tables() -> dict:
    return {"model": MODEL, "source": {},
            "context_attention": {"rows": flat(2.0, 3)},
            "generation_attention": {"rows": flat(0.2, 3)},
            "gemm": {"rows": [[n, k, m, 0.5] for n in (1.0, 100.0) for k in (2.0, 4.0)
                              for m in (1.0, 1e6)]},
            "moe": {"rows": flat(1.0, 2)},
            "all_reduce": {"rows": [[g, s, 0.1 if g else 0.3] for g in (0.0, 1.0)
                                    for s in (1.0, 1e9)]}}


def test_loglog_is_exact_on_the_grid_linear_in_log_space_between_and_extends_its_ends():
    xs, ys = [1.0, 100.0, 1000.0], [1.0, 100.0, 10.0]
    assert [loglog(xs, ys, x) for x in xs] == pytest.approx(ys)
    assert loglog(xs, ys, 10.0) == pytest.approx(10.0)  # y = x on the first segment
    assert loglog(xs, ys, 10000.0) == pytest.approx(1.0)  # the last segment, y = 1e5 / x
    assert loglog(xs, ys, 0.01) == pytest.approx(0.01)
    grid = Grid2([[1, 1, 1.0], [1, 100, 100.0], [100, 1, 10.0], [100, 100, 1000.0]])
    assert grid(10, 10) == pytest.approx(10.0 * 10 ** 0.5)


def test_a_decode_step_and_a_prefill_step_compose_their_ops_per_layer():
    cost = GpuStepCost(tables(), overhead_s=0.002)
    # per layer: qkv 0.5 + o_proj 0.5 + decode attention 0.2 + 2 graph all-reduces 0.2
    # + MoE 1.0 = 2.4 ms; 2 layers and the LM head GEMM (0.5): 5.3 ms, plus 2 ms
    assert cost.step_s([], [100, 200, 300]) == pytest.approx(0.0073)
    # a prefill of 50 new tokens on a 100-token context computes 3/4 of the causal triangle
    # (1.5 of 2.0 ms), with eager all-reduces (0.3 each): 4.1 ms a layer, 8.7 + 2 ms
    assert cost.step_s([(50, 100)], []) == pytest.approx(0.0107)
    assert cost.step_s([], []) == pytest.approx(0.002 + 0.0)


def test_the_committed_tables_give_a_decode_step_near_the_measured_end_to_end_one():
    """aiconfigurator's silicon_sample.csv: Qwen3-235B-FP8 on 8 H100s (TRT-LLM, TP8, EP8),
    batch 4, 512 input tokens: 11.44 ms per output token. Ours, composed from SGLang's
    bfloat16 op tables, must land within a factor of 2 (it is not fitted to it)."""
    cost = GpuStepCost.load()
    step = cost.step_s([], [600] * 4)
    assert 11.44e-3 / 2 < step < 11.44e-3 * 2
    assert cost.step_s([(16384, 16384)], []) > 20 * step  # a long prefill dwarfs a decode


def test_a_rollout_batch_runs_every_program_to_its_end_on_each_replica():
    from benchmarks.agentic import workload
    from sim import project
    from sim.costs import StepCost

    spec = workload.WorkloadSpec()
    batch = workload.rollout_batch(spec, 0, 8, 4)
    result = project.rollout(spec, "plain", StepCost(), programs=8, replicas=2, group_size=4,
                             seed=0)
    assert result["calls"] == sum(p.turns for p in batch)
    assert result["makespan_s"] > 0 and 0 < result["kv_hit_rate"] < 1
    assert result["steps_per_min"] == pytest.approx(result["calls"] * 60 / result["makespan_s"],
                                                    rel=1e-2)
