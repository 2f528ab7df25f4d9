"""Multi-turn chat throughput: SGLang's default tree core (Rust) vs the Python tree core.

    .venv/bin/python benchmarks/cache_core_overhead.py [--rounds 3] [--conversations 6]
        [--python-core backend|env] [extra launcher flags...]

Starts two servers of the demo model through our launcher: ``rust`` with
SGLang's default cache, ``python`` with our ``thunderagent`` radix-cache
backend (``--python-core backend``, the default; it needs ``install()`` to run
in the scheduler, here through ``THUNDERAGENT_CACHE_BACKEND=1``) or with
SGLang's own ``SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND=python``
(``--python-core env``). Then, per round, it runs the same untagged workload
on each, alternating, after flushing the cache: 8 workers, each holding
``--conversations`` chats one after another; a chat shares a system prompt and
adds a user turn of 40-70 words per turn (4-6 turns), and each reply is 8-16
tokens (ignore_eos), so contexts grow to a few hundred tokens. Reports
requests/s per run and the python/rust ratio; saves
benchmarks/results/cache_core_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "cache_core_overhead.json"
CORPUS = REPO / "thunderagent_sglang" / "demo_corpus.txt"
WORKERS = 8
SYSTEM_PROMPT = (
    "You are a coding agent. You run shell commands, read and edit files, and "
    "report what you changed. Keep answers short and use the tools you are given."
)
PYTHON_CORE = {
    "backend": (["--radix-cache-backend", "thunderagent"], {"THUNDERAGENT_CACHE_BACKEND": "1"}),
    "env": ([], {"SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python"}),
}


def corpus_words() -> list[str]:
    lines = [line for line in CORPUS.read_text().splitlines() if line and not line.startswith("#")]
    return " ".join(lines).split()


def conversation(words: list[str], rng: random.Random) -> list[tuple[str, int]]:
    """(user text, reply tokens) per turn."""
    turns = []
    for _ in range(rng.randint(4, 6)):
        start = rng.randrange(len(words) - 80)
        turns.append((" ".join(words[start:start + rng.randint(40, 70)]), rng.randint(8, 16)))
    return turns


def run_chat(url: str, turns: list[tuple[str, int]]) -> tuple[int, int, int]:
    """Play one chat; (requests, prompt tokens, cached prompt tokens)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    prompt = cached = 0
    with requests.Session() as http:
        for text, max_tokens in turns:
            messages.append({"role": "user", "content": text})
            reply = http.post(f"{url}/v1/chat/completions", json={
                "model": "demo", "messages": messages, "max_tokens": max_tokens,
                "temperature": 0, "ignore_eos": True,
            }, timeout=300)
            reply.raise_for_status()
            body = reply.json()
            usage = body["usage"]
            prompt += usage["prompt_tokens"]
            cached += (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
            messages.append({"role": "assistant", "content": body["choices"][0]["message"]["content"]})
    return len(turns), prompt, cached


def run_workload(server: Server, seed: int, conversations: int, words: list[str]) -> dict:
    requests.post(f"{server.url}/flush_cache", timeout=60).raise_for_status()
    rng = random.Random(seed)
    chats = [[conversation(words, rng) for _ in range(conversations)] for _ in range(WORKERS)]

    def worker(own: list) -> tuple[int, int, int]:
        totals = [0, 0, 0]
        for turns in own:
            for i, n in enumerate(run_chat(server.url, turns)):
                totals[i] += n
        return tuple(totals)

    start = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(worker, chats))
    seconds = time.monotonic() - start
    done, prompt, cached = (sum(r[i] for r in results) for i in range(3))
    return {"requests": done, "seconds": round(seconds, 2), "requests_per_s": round(done / seconds, 3),
            "prompt_tokens": prompt, "cached_fraction": round(cached / prompt, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=6, help="chats per worker and run")
    parser.add_argument("--python-core", choices=sorted(PYTHON_CORE), default="backend")
    args, extra = parser.parse_known_args()
    py_args, py_env = PYTHON_CORE[args.python_core]
    log_dir = Path("/tmp/thunderagent-cache-core")
    log_dir.mkdir(exist_ok=True)
    base = ["--enable-cache-report", *extra]
    servers = {"rust": Server("rust", base, {}, log_dir),
               "python": Server("python", [*base, *py_args], py_env, log_dir)}
    words = corpus_words()
    rows = []
    try:
        for server in servers.values():
            server.wait_ready()
        for name, server in servers.items():  # warm-up, not measured
            run_workload(server, seed=-1, conversations=1, words=words)
        for rnd in range(args.rounds):
            order = list(servers) if rnd % 2 == 0 else list(servers)[::-1]
            for name in order:
                row = {"system": name, "round": rnd,
                       **run_workload(servers[name], seed=rnd, conversations=args.conversations, words=words)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = summarize(rows)
    print(json.dumps(summary, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30),
                    "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["benchmarks/cache_core_overhead.py", *sys.argv[1:]]),
        "python_core_via": args.python_core, "workers": WORKERS, "extra_flags": extra,
        "runs": rows, "summary": summary}, indent=1))


def summarize(rows: list[dict]) -> dict:
    def rate(name, rnd):
        return next(r["requests_per_s"] for r in rows if r["system"] == name and r["round"] == rnd)

    rounds = sorted({r["round"] for r in rows})
    medians = {name: statistics.median(r["requests_per_s"] for r in rows if r["system"] == name)
               for name in ("rust", "python")}
    ratios = [rate("python", rnd) / rate("rust", rnd) for rnd in rounds]
    return {"requests_per_s_median": {k: round(v, 3) for k, v in medians.items()},
            "ratio_python_over_rust_per_round": [round(x, 3) for x in ratios],
            "ratio_python_over_rust_median": round(statistics.median(ratios), 3)}


if __name__ == "__main__":
    main()
