"""How fast a replica loads KV another replica wrote to a shared storage tier, against
recomputing it: the figure the router's ``--kv-storage-rate`` wants.

    .venv/bin/python benchmarks/storage_rate.py [--sizes 2000 4000 8000] [--rounds 2]

Two of our servers (demo model) share SGLang's HiCache file storage on one directory
(``--hicache-storage-backend file``, written through, prefetch waits for the load). For each
size and round: a fresh prompt is computed on A (written through to storage); the same prompt
on B, which finds it in storage and loads it; a fresh prompt of the same size on B, which it
recomputes. One output token each, so a call's time is its prefill. Reports per size the
median seconds of each and the load rate (tokens/s) against the prefill rate; saves
``benchmarks/results/storage_rate.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "storage_rate.json"
ARGS = ["--page-size", "16", "--max-total-tokens", "16384", "--context-length", "8192",
        "--enable-hierarchical-cache", "--hicache-io-backend", "direct",
        "--hicache-mem-layout", "layer_first", "--hicache-write-policy", "write_through",
        "--hicache-storage-backend", "file", "--hicache-storage-prefetch-policy",
        "wait_complete", "--enable-cache-report"]
QUIET = {"THUNDERAGENT_DEBUG_MEMCHECK": "0"}


def call(server: Server, ids: list[int], program: str) -> tuple[float, int]:
    """(seconds, cached tokens) of one call with one output token."""
    start = time.monotonic()
    response = requests.post(f"{server.url}/generate", headers={"X-Program-Id": program},
                             timeout=600, json={"input_ids": ids, "sampling_params": {
                                 "max_new_tokens": 1, "temperature": 0}})
    response.raise_for_status()
    return time.monotonic() - start, response.json()["meta_info"].get("cached_tokens", 0)


def prompt(size: int, salt: int) -> list[int]:
    return [(k * 13 + salt * 7919) % 1900 + 50 for k in range(size)]


def measure(a: Server, b: Server, sizes: list[int], rounds: int) -> list[dict]:
    rows = []
    for size in sizes:
        computed, loaded, recomputed, cached = [], [], [], []
        for r in range(rounds):
            salt = size * 100 + r * 2
            computed.append(call(a, prompt(size, salt), f"a-{salt}")[0])
            time.sleep(1)  # the write-through to storage finishes
            seconds, hit = call(b, prompt(size, salt), f"b-{salt}")
            loaded.append(seconds)
            cached.append(hit)
            recomputed.append(call(b, prompt(size, salt + 1), f"c-{salt}")[0])
        load_s, compute_s = statistics.median(loaded), statistics.median(recomputed)
        rows.append({"tokens": size, "computed_on_a_s": [round(x, 3) for x in computed],
                     "loaded_on_b_s": [round(x, 3) for x in loaded],
                     "recomputed_on_b_s": [round(x, 3) for x in recomputed],
                     "cached_on_b": cached,
                     "load_tokens_per_s": round(min(cached) / load_s) if load_s else None,
                     "prefill_tokens_per_s": round(size / compute_s) if compute_s else None,
                     "load_over_recompute": round(load_s / compute_s, 3)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000])
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="kv-storage-") as store:
        env = {**QUIET, "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR": store}
        logs = Path(tempfile.mkdtemp(prefix="storage-rate-logs-"))
        a, b = Server("storage-a", ARGS, env, logs), Server("storage-b", ARGS, env, logs)
        try:
            a.wait_ready(), b.wait_ready()
            rows = measure(a, b, args.sizes, args.rounds)
        finally:
            a.stop(), b.stop()
    out = {"machine": {"cpus": platform.os.cpu_count(), "platform": platform.platform()},
           "argv": sys.argv[1:], "server_args": ARGS, "rows": rows}
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print(f"saved {RESULTS}")


if __name__ == "__main__":
    main()
