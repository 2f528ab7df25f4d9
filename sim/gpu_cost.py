"""A GPU engine step's time, composed from measured op tables (``sim.gpu_tables``).

Per layer, for a step of ``T`` tokens (the prefilled calls' new tokens plus one per decoding
call), on one GPU of the tensor-parallel group:

    qkv GEMM (T x qkv_out x hidden) + o_proj GEMM (T x hidden x heads*head_dim)
    + prefill attention, per prefilled call: the measured causal attention over its whole
      context (batch 1, isl = context) times the share of the causal triangle its new tokens
      compute, 2 * new / context - (new / context)^2 (1 for a cold prompt)
    + decode attention: the measured generation attention at the step's decode batch and
      their mean context
    + 2 all-reduces of T x hidden elements (CUDA-graph kernels for a decode-only step, eager
      ones with a prefill: SGLang captures graphs for decode only)
    + the MoE layer on T tokens

times the layer count, plus the LM head GEMM on one row per sequence and ``overhead_s`` per
step (the scheduler's CPU time, norms, rotary and sampling, which the tables do not measure:
an estimate, 2 ms). Tables are interpolated piecewise-linearly in log-log space (linearly in
a GEMM's ``n``), and extrapolated along their last segment beyond their grid (attention
contexts past 16384 tokens, MoE past 16384 tokens). Not measured for this model at all: FP8
weights (the MoE shape is measured in bfloat16 only at moe_tp 8, so every op is bfloat16:
an upper bound on compute for an FP8 deployment).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

TABLES = Path("benchmarks/results/sim/gpu/qwen3-235b-h100-tp8.json")


def loglog(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise linear in log-log space through (xs, ys), xs ascending and positive;
    outside, the nearest segment extended. One point: that value."""
    if len(xs) == 1:
        return ys[0]
    x = max(x, 1e-9)
    i = min(max(bisect.bisect_left(xs, x), 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    w = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
    return math.exp(math.log(y0) + w * (math.log(y1) - math.log(y0)))


class Grid2:
    """rows (a, b, ms): interpolated in b within each measured a, then in a."""

    def __init__(self, rows):
        self.by_a: dict[float, tuple[list[float], list[float]]] = {}
        for a, b, ms in sorted(rows):
            xs, ys = self.by_a.setdefault(a, ([], []))
            xs.append(b)
            ys.append(ms)
        self.a = sorted(self.by_a)

    def __call__(self, a: float, b: float) -> float:
        values = [loglog(*self.by_a[k], b) for k in self.a]
        return loglog(self.a, values, a)


@dataclass
class GpuStepCost:
    tables: dict
    overhead_s: float = 0.002

    def __post_init__(self) -> None:
        t, m = self.tables, self.tables["model"]
        self.layers, self.hidden = m["layers"], m["hidden"]
        self.qkv_out = (m["heads_per_gpu"] + 2 * m["kv_heads_per_gpu"]) * m["head_dim"]
        self.attn_out = m["heads_per_gpu"] * m["head_dim"]
        self.vocab_per_gpu = m["vocab"] / m["tp"]
        self.prefill_attention = Grid2(t["context_attention"]["rows"])
        self.decode_attention = Grid2(t["generation_attention"]["rows"])
        self.all_reduce = {graph: Grid2([[1.0, s, ms] for g, s, ms in t["all_reduce"]["rows"]
                                         if g == graph]) for graph in (0.0, 1.0)}
        moe = t["moe"]["rows"]
        self.moe = ([r[0] for r in moe], [r[1] for r in moe])
        self.gemms: dict[float, Grid2] = {}  # k -> (n, m) grid
        for n, k, mm, ms in t["gemm"]["rows"]:
            self.gemms.setdefault(k, []).append([n, mm, ms])
        self.gemms = {k: _GemmN(rows) for k, rows in self.gemms.items()}

    @classmethod
    def load(cls, path: Path = TABLES, **kwargs) -> "GpuStepCost":
        return cls(json.loads(Path(path).read_text()), **kwargs)

    def gemm_ms(self, m: float, n: float, k: float) -> float:
        return self.gemms[k](n, m) if m > 0 else 0.0

    def layer_ms(self, prefill: list[tuple[int, int]], running_contexts: list[int]) -> float:
        tokens = sum(new for new, _ in prefill) + len(running_contexts)
        if tokens == 0:
            return 0.0
        ms = self.gemm_ms(tokens, self.qkv_out, self.hidden)
        ms += self.gemm_ms(tokens, self.hidden, self.attn_out)
        for new, context in prefill:
            share = new / context if context else 1.0
            ms += self.prefill_attention(1, max(context, 1)) * (2 * share - share * share)
        if running_contexts:
            mean = sum(running_contexts) / len(running_contexts)
            ms += self.decode_attention(len(running_contexts), max(mean, 1.0))
        graph = 0.0 if prefill else 1.0
        ms += 2 * self.all_reduce[graph](1.0, tokens * self.hidden)
        ms += loglog(*self.moe, tokens)
        return ms

    def step_s(self, prefill: list[tuple[int, int]], running_contexts: list[int]) -> float:
        sequences = len(prefill) + len(running_contexts)
        ms = self.layers * self.layer_ms(prefill, running_contexts)
        ms += self.gemm_ms(sequences, self.vocab_per_gpu, self.hidden)
        return self.overhead_s + ms / 1000.0

    def to_json(self) -> dict:
        return {"model": self.tables["model"], "source": self.tables["source"],
                "overhead_s": self.overhead_s}


class _GemmN:
    """One k: for each measured n a curve in m (log-log), then linear in n between them."""

    def __init__(self, rows):
        self.curves = Grid2(rows)

    def __call__(self, n: float, m: float) -> float:
        ns = self.curves.a
        i = min(max(bisect.bisect_left(ns, n), 1), len(ns) - 1)
        n0, n1 = ns[i - 1], ns[i]
        y0, y1 = (loglog(*self.curves.by_a[v], m) for v in (n0, n1))
        return max(0.0, y0 + (y1 - y0) * (n - n0) / (n1 - n0))
