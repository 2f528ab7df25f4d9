"""Extract the measured GPU op tables the projections use from aiconfigurator's data.

    python -m sim.gpu_tables AICONFIGURATOR_GIT_DIR [--out benchmarks/results/sim/gpu/...]

Source: ai-dynamo/aiconfigurator (its measured per-op tables for SGLang 0.5.14 on an H100 SXM:
``aic-core/src/aiconfigurator_core/systems/data/h100_sxm/<op>/sglang/0.5.14/*.parquet``),
read from a git directory (a bare clone or a fetched snapshot) at its HEAD. Needs pyarrow and
pandas (not needed to run the simulator: the extracted slices are committed as JSON).

The slices are those of Qwen3-235B-A22B at tensor parallelism 8 (per GPU: 8 query heads, 1 KV
head of 128, hidden 4096, MoE of 128 experts, top 8, intermediate 1536, the experts split by
tensor parallelism 8), in bfloat16 (the only dtype aiconfigurator measured for this MoE shape
at moe_tp 8), FlashAttention 3 with a bfloat16 KV cache. Latencies are milliseconds of one op
in one layer on one GPU.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

DATA = "aic-core/src/aiconfigurator_core/systems/data/h100_sxm"
FILES = {
    "context_attention": "attention/sglang/0.5.14/context_attention_perf.parquet",
    "generation_attention": "attention/sglang/0.5.14/generation_attention_perf.parquet",
    "gemm": "gemm/sglang/0.5.14/gemm_perf.parquet",
    "moe": "moe/sglang/0.5.14/moe_perf.parquet",
    "all_reduce": "comm/sglang/0.5.14/custom_allreduce_perf.parquet",
}
MODEL = {"name": "Qwen3-235B-A22B", "layers": 94, "hidden": 4096, "heads_per_gpu": 8,
         "kv_heads_per_gpu": 1, "head_dim": 128, "experts": 128, "topk": 8, "moe_inter": 1536,
         "vocab": 151936, "tp": 8}
GEMM_N = (1024, 1536, 4096, 16384, 51200)  # around qkv (1280), o_proj (4096), lm_head (18992)
GEMM_K = (1024, 4096)
OUT = Path("benchmarks/results/sim/gpu/qwen3-235b-h100-tp8.json")


def _table(git_dir: str, name: str):
    import pandas as pd

    blob = subprocess.run(["git", f"--git-dir={git_dir}", "show", f"HEAD:{DATA}/{FILES[name]}"],
                          check=True, capture_output=True).stdout
    return pd.read_parquet(io.BytesIO(blob))


def _rows(frame, columns) -> list[list[float]]:
    frame = frame.sort_values(list(columns[:-1]))
    return [[float(v) for v in row] for row in frame[list(columns)].itertuples(index=False)]


def extract(git_dir: str) -> dict:
    m = MODEL
    attention = {}
    for name, key in (("context_attention", "isl"), ("generation_attention", "step")):
        t = _table(git_dir, name)
        t = t[(t.kernel_source == "fa3") & (t.attn_dtype == "bfloat16")
              & (t.kv_cache_dtype == "bfloat16") & (t.num_heads == m["heads_per_gpu"])
              & (t.num_key_value_heads == m["kv_heads_per_gpu"])
              & (t.head_dim == m["head_dim"]) & (t.window_size == 0)]
        attention[name] = {"columns": ["batch_size", key, "ms"],
                           "rows": _rows(t, ["batch_size", key, "latency"])}
    g = _table(git_dir, "gemm")
    g = g[(g.gemm_dtype == "bfloat16") & g.n.isin(GEMM_N) & g.k.isin(GEMM_K)]
    t = _table(git_dir, "moe")
    t = t[(t.moe_dtype == "bfloat16") & (t.hidden_size == m["hidden"])
          & (t.inter_size == m["moe_inter"]) & (t.num_experts == m["experts"])
          & (t.topk == m["topk"]) & (t.moe_tp_size == m["tp"]) & (t.moe_ep_size == 1)
          & (t.distribution == "balanced")]
    a = _table(git_dir, "all_reduce")
    a = a[a.num_gpus == m["tp"]]
    commit = subprocess.run(["git", f"--git-dir={git_dir}", "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    return {
        "source": {"repository": "ai-dynamo/aiconfigurator", "commit": commit,
                   "files": {k: f"{DATA}/{v}" for k, v in FILES.items()},
                   "device": "NVIDIA H100 80GB HBM3", "framework": "SGLang 0.5.14",
                   "command": "python -m sim.gpu_tables <aiconfigurator git dir>"},
        "model": m,
        **attention,
        "gemm": {"columns": ["n", "k", "m", "ms"], "rows": _rows(g, ["n", "k", "m", "latency"])},
        "moe": {"columns": ["num_tokens", "ms"], "rows": _rows(t, ["num_tokens", "latency"])},
        "all_reduce": {"columns": ["graph", "message_elements", "ms"], "rows": [
            [float(b == "sglang_graph"), float(s), float(lat)] for b, s, lat in
            a.sort_values(["backend", "message_size"])[["backend", "message_size", "latency"]]
            .itertuples(index=False)]},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.gpu_tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("git_dir", help="aiconfigurator's git directory")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    try:
        tables = extract(args.git_dir)
    except ImportError as error:
        print(f"error: {error}: pip install pyarrow pandas", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"error: {args.git_dir}: {error.stderr.decode(errors='replace').strip()}",
              file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(tables, indent=0) + "\n")
    counts = {k: len(v["rows"]) for k, v in tables.items() if isinstance(v, dict) and "rows" in v}
    print(f"saved {args.out}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
