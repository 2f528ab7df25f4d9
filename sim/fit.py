"""Fit the step-cost model once: on ``python -m benchmarks calibrate`` output, then on one
measured run of plain SGLang (the runner's point file at N=16).

1. The calibration times single calls on an otherwise idle server: a cold call of ``P`` prompt
   tokens and the next turn (``P`` + answer + 4 tokens, all but the new ones cached), each
   with ``out`` answer tokens. A single call takes one prefill step and ``out - 1`` decode
   steps, so its time is linear in four unknowns: ``prefill_token_s`` (per computed token),
   ``prefill_attend_s`` (per attended token times context / 1000; on a CPU the whole context is
   attended, ``attend_whole``), ``step_s`` (one step at batch 1: scheduler overhead, weight
   reads, sampling) and ``decode_context_s`` (per context token a decode step reads / 1000).
   Non-negative least squares over every calibrated size.
2. The loaded machine. Under the runner's load the same work takes longer than at batch 1
   (the client, tokenizer and detokenizer share the 2 cores with the scheduler's threads):
   the plain run's scheduler spent ``run_batch`` seconds (SGLang's own stage meter) on its
   window, against the batch-1 model's cost of the calls finished in that window. Their ratio
   (``load_factor``, about 2.4 here) scales every cost.
3. Batch 1 cannot tell how a step's cost splits between the step and each sequence in it
   (``base_s`` against ``decode_seq_s``): the split is the one, on a grid of 11 fractions,
   whose simulated plain SGLang comes closest to the measured plain run's steps per minute.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy.optimize import nnls

from sim.costs import StepCost

SPLITS = tuple(i / 10 for i in range(11))  # the fraction of a batch-1 step paid once per step


def calibration_rows(path: Path) -> list[tuple[int, int, float, int, int, float]]:
    """(prompt, cached, seconds, output) of each timed call: cold ones and cached ones."""
    rows = []
    for m in json.loads(Path(path).read_text())["measurements"]:
        p, out = m["prompt_tokens"], m["output_tokens"]
        rows.append((p, 0, m["cold_median_s"], out))
        cached = int(statistics.median(m["cached_tokens"]))
        rows.append((p + out + 4, cached, m["cached_median_s"], out))
    return rows


def _features(prompt: int, cached: int, out: int, attend_whole: bool) -> list[float]:
    new = prompt - cached
    attended = prompt if attend_whole else new
    contexts = sum(prompt + k for k in range(1, out))  # what each decode step reads
    return [new, attended * prompt / 1000, out, contexts / 1000]


def fit_single(rows, attend_whole: bool = True) -> tuple[StepCost, float, dict]:
    """The batch-1 fit: a StepCost with the whole step in ``decode_seq_s`` (split later),
    the step time, and the fit's residuals."""
    x = np.array([_features(p, c, out, attend_whole) for p, c, _, out in rows], dtype=float)
    y = np.array([t for _, _, t, _ in rows], dtype=float)
    coef, _ = nnls(x, y)
    token, attend, step, context = (float(v) for v in coef)
    cost = StepCost(base_s=0.0, prefill_token_s=token, prefill_attend_s=attend,
                    decode_seq_s=step, decode_context_s=context, attend_whole=attend_whole)
    return cost, step, {"calls": [list(r) for r in rows], "fitted_s": (x @ coef).tolist(),
                        "residual_s": (x @ coef - y).tolist()}


def batch1_call_s(cost: StepCost, step: float, prompt: int, cached: int, out: int) -> float:
    """One call alone: its prefill step and ``out - 1`` decode steps (``fit_single``'s model)."""
    new, attended = prompt - cached, prompt if cost.attend_whole else prompt - cached
    contexts = sum(prompt + k for k in range(1, out))
    return (cost.prefill_token_s * new + cost.prefill_attend_s * attended * prompt / 1000
            + step * out + cost.decode_context_s * contexts / 1000)


def load_factor(cost: StepCost, step: float, point: dict, start: float, end: float) -> dict:
    """The measured scheduler's busy seconds over the batch-1 model's for the window's calls
    (a point file's ``calls`` rows: program, turn, sent, finished, prompt, cached, output)."""
    calls = [c for c in point["calls"] if start <= c[3] < end]
    model_s = sum(batch1_call_s(cost, step, c[4], c[5], c[6]) for c in calls)
    busy = point["server_metrics"]['sglang:scheduler_stage_seconds_total{category="run_batch"}']
    return {"factor": busy / model_s, "run_batch_s": busy, "batch1_model_s": round(model_s, 3),
            "calls": len(calls)}


def scaled(cost: StepCost, factor: float) -> StepCost:
    return replace(cost, base_s=cost.base_s * factor,
                   prefill_token_s=cost.prefill_token_s * factor,
                   prefill_attend_s=cost.prefill_attend_s * factor,
                   decode_seq_s=cost.decode_seq_s * factor,
                   decode_context_s=cost.decode_context_s * factor)


def split(cost: StepCost, step: float, fraction: float) -> StepCost:
    """``fraction`` of the batch-1 step paid once per step, the rest per running sequence."""
    return StepCost(base_s=fraction * step, prefill_token_s=cost.prefill_token_s,
                    prefill_attend_s=cost.prefill_attend_s, decode_seq_s=(1 - fraction) * step,
                    decode_context_s=cost.decode_context_s, attend_whole=cost.attend_whole)


def fit_split(cost: StepCost, step: float, measured_steps_per_min: float,
              simulate) -> tuple[StepCost, list[dict]]:
    """The split whose ``simulate(cost)`` (steps per minute) is closest to the measured."""
    tried = [{"fraction": f, "steps_per_min": simulate(split(cost, step, f))} for f in SPLITS]
    best = min(tried, key=lambda t: abs(t["steps_per_min"] - measured_steps_per_min))
    return split(cost, step, best["fraction"]), tried
