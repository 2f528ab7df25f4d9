"""The benchmark's model, and ``python -m benchmarks calibrate``: a miss against a hit.

What decides agent serving is the cost of a call that misses the cache
relative to one that hits (``../shared/docs/benchmarking.md``). On a CPU a
decode step costs mostly weight reads plus the scheduler's per-step overhead,
while prefill costs compute per token; so the model is fp32 with a wide MLP,
two layers and a single KV head (~16M parameters, 1 KiB of KV per token), built
locally by the demo-model builder with random weights and a 2048-token vocabulary.

The calibration starts plain SGLang on it and times, ``--repeats`` times, a
cold call (a fresh random prompt of ``--prompt-tokens``) and then the same
prompt plus its answer and a few new tokens (the next turn of an agent: all but
the new tokens cached), both with ``--output-tokens`` answers; it reports the
medians and their ratio and saves ``benchmarks/results/agentic/calibration.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

from thunderagent_sglang.demo_model import DemoModelSpec, default_cache_dir, ensure_demo_model

from benchmarks.agentic import server as servers
from benchmarks.agentic.player import Player
from benchmarks.agentic.systems import PLAIN, System

MODEL_SPEC = DemoModelSpec(hidden_size=512, intermediate_size=4096, num_layers=2, num_heads=8,
                           num_kv_heads=1, max_position_embeddings=16384)
RESULTS = Path(__file__).resolve().parents[1] / "results" / "agentic"


def model_dir(cache_dir: Path | None = None) -> Path:
    """The benchmark model, built on first use (seconds) into the demo-model cache."""
    return ensure_demo_model(MODEL_SPEC, cache_dir or default_cache_dir())


async def measure(url: str, prompt_tokens: int, output_tokens: int, repeats: int, seed: int = 0) -> dict:
    player, rng = Player(url, tagged=False), random.Random(seed)
    cold, cached, cached_tokens = [], [], []
    try:
        await player.complete([5] * 32, 2)  # first call pays one-time costs
        for _ in range(repeats):
            prompt = [rng.randrange(3, 2048) for _ in range(prompt_tokens)]
            t = time.monotonic()
            answer, _ = await player.complete(prompt, output_tokens)
            cold.append(time.monotonic() - t)
            t = time.monotonic()
            _, usage = await player.complete(prompt + answer + [7, 8, 9, 10], output_tokens)
            cached.append(time.monotonic() - t)
            cached_tokens.append(usage["prompt_tokens_details"]["cached_tokens"])
    finally:
        await player.aclose()
    cold_s, cached_s = statistics.median(cold), statistics.median(cached)
    return {"prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "repeats": repeats,
            "cold_s": [round(x, 3) for x in cold], "cached_s": [round(x, 3) for x in cached],
            "cached_tokens": cached_tokens, "cold_median_s": round(cold_s, 3),
            "cached_median_s": round(cached_s, 3), "cold_over_cached": round(cold_s / cached_s, 2),
            "cold_prefill_tokens_per_s": round(prompt_tokens / cold_s)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--output-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "calibration.json")
    args = parser.parse_args(argv)
    model = model_dir(args.cache_dir)
    system = System("plain", "SGLang", ("--max-total-tokens", "65536"), PLAIN, ours=False)
    server = servers.start(system, model, Path("/tmp/thunderagent-bench/logs"), "calibrate")
    try:
        rows = [asyncio.run(measure(server.url, n, args.output_tokens, args.repeats))
                for n in args.prompt_tokens]
    finally:
        server.stop()
    for row in rows:
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model_spec": MODEL_SPEC.__dict__, "model_dir": str(model),
                                    "machine": servers.machine(), "versions": servers.versions(),
                                    "measurements": rows}, indent=1))
    print(f"saved {args.out}")
