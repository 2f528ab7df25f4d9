"""What the router adds per call: latency and the router's CPU, one replica direct vs through
the router, alternating rounds in one run.

    .venv/bin/python benchmarks/router_overhead.py [--rounds 5] [--calls 40] [--workers 4]

One of our servers (demo model) and one router in front of it (``--backends`` that server).
Each round plays the same calls (tagged programs of 3 growing turns, ~300-token prompts, 8
output tokens, ``/v1/completions``) first direct, then through the router (then the other way
round in the next round), sequentially (``latency``) and with ``--workers`` concurrent clients
(``throughput``). Reports the median latency per call, calls/s, and the router's CPU seconds
per call (its process's user+system time over the round). Saves
benchmarks/results/router_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.router_process import RouterProcess  # noqa: E402
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "router_overhead.json"


def calls_of(round_no: int, n: int, tag: str) -> list[tuple[str, list[int]]]:
    """n calls: programs of 3 turns whose prompts grow (the prefix is reused)."""
    out = []
    for i in range(n):
        program, turn = i // 3, i % 3
        base = [(7 * program + k) % 1800 + 100 for k in range(300)]
        out.append((f"{tag}-r{round_no}-p{program}", base + [5] * (20 * turn)))
    return out


def one(session: requests.Session, url: str, pid: str, prompt: list[int]) -> float:
    start = time.perf_counter()
    r = session.post(f"{url}/v1/completions", headers={"X-Program-Id": pid}, timeout=120,
                     json={"model": "default", "prompt": prompt, "max_tokens": 8,
                           "ignore_eos": True, "temperature": 0})
    r.raise_for_status()
    return time.perf_counter() - start


def release(url: str, pids: set[str]) -> None:
    for pid in pids:
        requests.post(f"{url}/programs/release", json={"program_id": pid}, timeout=30)


def play(url: str, calls, workers: int) -> tuple[list[float], float]:
    """Latencies and wall seconds; programs' turns stay in order within one worker."""
    by_program: dict[str, list] = {}
    for pid, prompt in calls:
        by_program.setdefault(pid, []).append(prompt)

    def program(item):
        session = requests.Session()
        return [one(session, url, item[0], prompt) for prompt in item[1]]

    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        latencies = [x for lat in pool.map(program, by_program.items()) for x in lat]
    wall = time.perf_counter() - start
    release(url, set(by_program))
    return latencies, wall


def cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=42)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    logs = Path("/tmp/thunderagent-router-overhead")
    logs.mkdir(exist_ok=True)
    server = Server("replica", [], {"THUNDERAGENT_DEBUG_MEMCHECK": "0"}, logs).wait_ready()
    router = RouterProcess([server.url], logs, "--log-level", "warning")
    rows = []
    try:
        router.wait_ready(1)
        proc = psutil.Process(router.proc.pid)
        play(server.url, calls_of(-1, 12, "warm"), 1)  # warm the engine
        for r in range(args.rounds):
            order = [("direct", server.url), ("router", router.url)]
            for mode, workers in (("latency", 1), ("throughput", args.workers)):
                for name, url in (order if r % 2 == 0 else order[::-1]):
                    before = cpu(proc)
                    lat, wall = play(url, calls_of(r, args.calls, f"{name}-{mode}"), workers)
                    row = {"round": r, "mode": mode, "path": name,
                           "median_ms": round(1000 * statistics.median(lat), 2),
                           "calls_per_s": round(len(lat) / wall, 3),
                           "router_cpu_ms_per_call": round(1000 * (cpu(proc) - before)
                                                           / len(lat), 3)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        router.stop()
        server.stop()
    summary = {}
    for mode in ("latency", "throughput"):
        pairs = [(next(x for x in rows if x["round"] == r and x["mode"] == mode
                       and x["path"] == "direct"),
                  next(x for x in rows if x["round"] == r and x["mode"] == mode
                       and x["path"] == "router")) for r in range(args.rounds)]
        summary[mode] = {
            "added_ms_median": round(statistics.median(b["median_ms"] - a["median_ms"]
                                                       for a, b in pairs), 2),
            "throughput_ratio_median": round(statistics.median(
                b["calls_per_s"] / a["calls_per_s"] for a, b in pairs), 3),
            "router_cpu_ms_per_call_median": round(statistics.median(
                b["router_cpu_ms_per_call"] for _, b in pairs), 3)}
    result = {"machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
              "args": vars(args), "summary": summary, "rows": rows}
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
