"""What rank agreement costs per scheduler step at ``--tp-size 2`` on a CPU: plain SGLang
(``THUNDERAGENT_DISABLE=1``) against ours (every call a program, rank 0's step riding SGLang's
per-step broadcast), alternating servers in one run, and the same pair at TP=1 (our features
with no broadcast of ours): the TP=2 ratio over the TP=1 ratio is what agreement adds.

    .venv/bin/python benchmarks/tp_step_cost.py [--rounds 2] [--tp 1 2] [--batches 6] \
        [--batch 8] [--tokens 64]

Each phase starts one server (demo model, one core per rank), warms it up, then sends
``--batches`` batches of ``--batch`` concurrent calls (a 64-token prompt, ``--tokens`` output
tokens, ``ignore_eos``): the calls of a batch decode together, so a batch takes one prefill
step and ``--tokens`` decode steps; its wall time over ``--tokens + 1`` steps is the time per
step. Also an idle phase: ``--idle-calls`` one-token calls one after another (the cost when
steps are short and the broadcast is a larger share). Then the broadcast alone: two local gloo
ranks time SGLang's ``broadcast_pyobj`` of an empty step list (plain SGLang's step without a
new request) and of one carrying our ``ProgramStep`` (``--broadcasts`` calls each). Reports
the median time per step of each phase, ours/plain per round and their median; saves
``benchmarks/results/tp_step_cost.json``.
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

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "tp_step_cost.json"
QUIET = {"THUNDERAGENT_DEBUG_MEMCHECK": "0"}  # the tests' idle check walks the tree
SYSTEMS = {"plain": {**QUIET, "THUNDERAGENT_DISABLE": "1"}, "ours": QUIET}


def call(url: str, ids: list[int], tokens: int, pid: str | None) -> None:
    headers = {"X-Program-Id": pid} if pid else {}
    reply = requests.post(f"{url}/generate", headers=headers, timeout=300, json={
        "input_ids": ids, "sampling_params": {"max_new_tokens": tokens, "ignore_eos": True,
                                              "temperature": 0}})
    reply.raise_for_status()


def batch_step_s(url: str, system: str, index: int, size: int, tokens: int) -> float:
    tag = system == "ours"
    prompts = [[100 + (index * 31 + i * 7 + k) % 1800 for k in range(64)] for i in range(size)]
    start = time.perf_counter()
    with ThreadPoolExecutor(size) as pool:
        list(pool.map(lambda i: call(url, prompts[i], tokens,
                                     f"tp-{index}-{i}" if tag else None), range(size)))
    return (time.perf_counter() - start) / (tokens + 1)


def short_calls_s(url: str, system: str, calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        call(url, [7 + i % 50] * 16, 1, f"short-{i}" if system == "ours" else None)
    return (time.perf_counter() - start) / calls


def _broadcast_worker(rank: int, port: int, calls: int, out) -> None:
    """One of two gloo ranks: SGLang's broadcast_pyobj of an empty step list (plain SGLang's
    idle step) and of a list holding our ProgramStep, timed on rank 0."""
    import os

    import torch.distributed as dist
    from sglang.srt.utils import broadcast_pyobj

    from thunderagent_sglang.engine.tp_consensus import ProgramStep

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    step = ProgramStep(time.monotonic(), {"link": (512, 1.2e10, 5e-6), "rate": 2000.0})
    times = {}
    for name, data in (("empty", []), ("program_step", [step]), ("empty_again", [])):
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            broadcast_pyobj(list(data) if rank == 0 else None, rank, None, src=0)
        times[name] = (time.perf_counter() - start) / calls
    if rank == 0:
        out.put(times)
    dist.destroy_process_group()


def broadcast_cost(calls: int) -> dict:
    """Seconds per broadcast of SGLang's per-step request list between two local gloo ranks:
    empty (a step with no new request) against one carrying our ProgramStep."""
    import multiprocessing as mp

    from tests.integration.server import free_port

    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_broadcast_worker, args=(r, port, calls, out)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    times = out.get(timeout=600)
    for proc in procs:
        proc.join(60)
    return {**times, "added_s": times["program_step"] - (times["empty"] + times["empty_again"]) / 2}


def phase(system: str, tp: int, args, log_dir: Path) -> dict:
    server = Server(f"tp{tp}-{system}", ["--tp-size", str(tp)], SYSTEMS[system], log_dir)
    try:
        server.wait_ready()
        batch_step_s(server.url, system, 999, args.batch, 8)  # warm-up
        steps = [batch_step_s(server.url, system, i, args.batch, args.tokens)
                 for i in range(args.batches)]
        short = short_calls_s(server.url, system, args.idle_calls)
        return {"step_s": statistics.median(steps), "steps_s": steps, "short_call_s": short}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tp", type=int, nargs="+", default=[1, 2],
                        help="tensor-parallel sizes to measure (TP=1: our features without "
                             "any broadcast of ours)")
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--idle-calls", type=int, default=40)
    parser.add_argument("--broadcasts", type=int, default=2000)
    parser.add_argument("--log-dir", default="/tmp/tp_step_cost")
    args = parser.parse_args()
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    rounds = []
    for r in range(args.rounds):
        order = ["plain", "ours"] if r % 2 == 0 else ["ours", "plain"]
        for tp in args.tp:
            result = {"tp": tp, **{system: phase(system, tp, args, log_dir) for system in order}}
            result["step_ratio"] = result["ours"]["step_s"] / result["plain"]["step_s"]
            result["short_call_ratio"] = (result["ours"]["short_call_s"]
                                          / result["plain"]["short_call_s"])
            rounds.append(result)
            print(f"round {r + 1} TP={tp}: step plain {result['plain']['step_s'] * 1e3:.2f} ms, "
                  f"ours {result['ours']['step_s'] * 1e3:.2f} ms (x{result['step_ratio']:.3f}); "
                  f"short call plain {result['plain']['short_call_s'] * 1e3:.1f} ms, ours "
                  f"{result['ours']['short_call_s'] * 1e3:.1f} ms "
                  f"(x{result['short_call_ratio']:.3f})", flush=True)
    broadcast = broadcast_cost(args.broadcasts)
    print(f"broadcast per step: empty {broadcast['empty'] * 1e6:.0f} us, with our step "
          f"{broadcast['program_step'] * 1e6:.0f} us (+{broadcast['added_s'] * 1e6:.0f} us)",
          flush=True)
    summary = {
        "what": "time per scheduler step on a CPU (TP=2: gloo), plain SGLang vs ours (every "
                "call a program), alternating servers in one run, at each --tp size",
        "command": "python benchmarks/tp_step_cost.py " + " ".join(sys.argv[1:]),
        "args": vars(args), "machine": {"cpus": len(__import__("os").sched_getaffinity(0)),
                                        "platform": platform.platform()},
        "rounds": rounds,
        "broadcast": broadcast,
        "median_step_ratio": {tp: statistics.median(r["step_ratio"] for r in rounds
                                                    if r["tp"] == tp) for tp in args.tp},
        "median_short_call_ratio": {tp: statistics.median(r["short_call_ratio"] for r in rounds
                                                          if r["tp"] == tp) for tp in args.tp},
    }
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    for tp in args.tp:
        print(f"TP={tp} median ours/plain: step x{summary['median_step_ratio'][tp]:.3f}, short "
              f"call x{summary['median_short_call_ratio'][tp]:.3f}")
    print(f"saved {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
