"""Figures of one measured point and the table across systems: pure, no I/O.

A point is one system at one concurrency (serving, chat) or batch size
(rollout). Steps per minute = LLM calls completed per minute (the paper's
metric): in serving modes, calls that finished inside the measured window
(after the warm-up); in a rollout, all calls over the makespan.
"""

from __future__ import annotations

import math

from benchmarks.agentic.player import Recorder


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default); None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(xs[lo] + (xs[hi] - xs[lo]) * (pos - lo), 3)


def _calls_figures(calls, minutes: float) -> dict:
    prompt = sum(c.prompt_tokens for c in calls)
    cached = sum(c.cached_tokens for c in calls)
    latency = [c.end_s - c.start_s for c in calls]
    return {
        "calls": len(calls),
        "steps_per_min": round(len(calls) / minutes, 2) if minutes > 0 else None,
        "kv_hit_rate": round(cached / prompt, 4) if prompt else None,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefill_recomputed_tokens": prompt - cached,
        "output_tokens": sum(c.output_tokens for c in calls),
        "call_latency_p50_s": percentile(latency, 50),
        "call_latency_p95_s": percentile(latency, 95),
    }


def serving_figures(rec: Recorder, warmup_s: float, window_s: float) -> dict:
    """Figures of the window [warmup_s, warmup_s + window_s]."""
    end = warmup_s + window_s
    calls = [c for c in rec.calls if warmup_s <= c.end_s < end]
    programs = [p for p in rec.programs if warmup_s <= p.end_s < end]
    durations = [p.end_s - p.start_s for p in programs]
    return {**_calls_figures(calls, window_s / 60),
            "programs_completed": len(programs),
            "program_time_p50_s": percentile(durations, 50),
            "program_time_p95_s": percentile(durations, 95)}


def rollout_figures(rec: Recorder) -> dict:
    makespan = max((p.end_s for p in rec.programs), default=0.0)
    durations = [p.end_s - p.start_s for p in rec.programs]
    return {**_calls_figures(rec.calls, makespan / 60),
            "makespan_s": round(makespan, 2),
            "programs_completed": len(rec.programs),
            "program_time_p50_s": percentile(durations, 50),
            "program_time_p95_s": percentile(durations, 95)}


def metric_deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counter increases between two ``/metrics`` samples (keys as in ``sample_metrics``)."""
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in sorted(after)}


def loop_ms_per_call(metrics: dict[str, float], calls: int) -> float | None:
    """The scheduler loop's own time per call: every stage but the forward pass and idling
    (SGLang's ``scheduler_stage_seconds_total``, only with ``--sglang-metrics``)."""
    stage = "sglang:scheduler_stage_seconds_total"
    own = [v for k, v in metrics.items() if k.startswith(stage)
           and 'category="run_batch"' not in k and 'category="idle"' not in k]
    return round(1000 * sum(own) / calls, 2) if own and calls else None


def with_limit_fractions(points: list[dict]) -> list[dict]:
    """Each point's steps/min as a fraction of the ``limit`` system's at the same load."""
    limits = {(p["mode"], p["concurrency"]): p["figures"]["steps_per_min"]
              for p in points if p["system"] == "limit"}
    out = []
    for p in points:
        limit = limits.get((p["mode"], p["concurrency"]))
        mine = p["figures"]["steps_per_min"]
        fraction = round(mine / limit, 3) if limit and mine is not None else None
        out.append({**p, "fraction_of_limit": fraction})
    return out


COLUMNS = (("steps/min", "steps_per_min"), ("of limit", None), ("hit rate", "kv_hit_rate"),
           ("recomputed", "prefill_recomputed_tokens"), ("prog p50", "program_time_p50_s"),
           ("prog p95", "program_time_p95_s"), ("call p50", "call_latency_p50_s"),
           ("call p95", "call_latency_p95_s"), ("makespan", "makespan_s"))


def table(points: list[dict]) -> str:
    """A plain-text table, one row per system and load, in measured order."""
    head = f"{'mode':8} {'N':>4} {'system':20}" + "".join(f" {c[0]:>10}" for c in COLUMNS) \
        + f" {'pauses':>7} {'offloads':>8} {'sched cpu ms/call':>17} {'loop ms/call':>12}"
    lines = [head, "-" * len(head)]
    for p in with_limit_fractions(points):
        f, m = p["figures"], p.get("server_metrics") or {}
        cells = [p["fraction_of_limit"] if key is None else f.get(key) for _, key in COLUMNS]
        pauses = m.get("thunderagent_pauses_total")
        offloads = m.get('thunderagent_kv_decisions_total{decision="offload"}')
        lines.append(f"{p['mode']:8} {p['concurrency']:>4} {p['system']:20}"
                     + "".join(f" {_cell(c):>10}" for c in cells)
                     + f" {_cell(pauses):>7} {_cell(offloads):>8} {_cell(p.get('scheduler_cpu_ms_per_call')):>17}"
                     + f" {_cell(loop_ms_per_call(m, f['calls'])):>12}")
    fleet = [p for p in points if "kv_imbalance" in p["figures"]]
    if fleet:
        lines += ["", f"{'fleet':8} {'N':>4} {'system':20} {'imbalance':>10} {'independent':>12} "
                  f"{'usage':>14} {'mean gap':>9} {'migrations':>10}"]
        for p in fleet:
            f = p["figures"]
            usage = "/".join(_cell(u) for u in f.get("kv_usage_mean") or [])
            lines.append(f"{p['mode']:8} {p['concurrency']:>4} {p['system']:20} "
                         f"{_cell(f['kv_imbalance']):>10} "
                         f"{_cell(f.get('kv_imbalance_independent')):>12} {usage:>14} "
                         f"{_cell(f.get('kv_mean_gap')):>9} {_cell(f.get('migrations')):>10}")
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if value < 1000 else f"{value:.0f}"
    return str(value)
