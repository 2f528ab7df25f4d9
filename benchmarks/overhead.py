"""Our overhead on plain traffic: multi-turn chat with and without the plugin, side by side.

    .venv/bin/python benchmarks/overhead.py [--rounds 3] [--conversations 40] [extra launcher flags...]

Starts three servers of the demo model through our launcher: ``plain``
(THUNDERAGENT_DISABLE=1: SGLang's default cache on its Rust tree core, none of
our hooks), ``ours`` (the defaults: our radix-cache backend on the Python tree
core and every program hook, with untagged traffic) and ``ours-tagged`` (the
same server build, every chat a program: X-Program-Id on each call, released
at its end). Per round it runs the same workload on each, in alternating
order, after flushing the cache: 8 workers, each holding ``--conversations``
chats one after another; a chat shares a system prompt and adds a user turn
of 40-70 words per turn (4-6 turns), each reply 8-16 tokens (ignore_eos), so
contexts grow to a few hundred tokens. Reports per run requests/s and the
scheduler process's CPU milliseconds per request (the steadier figure on a
shared machine, and the scheduler-step cost per request), and each system's
ratio to ``plain``; saves benchmarks/results/overhead.json. ``--python-floor`` adds a fourth
server, ``plain-python`` (plain SGLang on its own Python tree core), to tell what of our cost
any Python tree pays; it saves benchmarks/results/overhead_python_floor.json instead.

    .venv/bin/python benchmarks/overhead.py --live-programs 16 256 [--rounds 3] [...]

Growth with the number of programs instead: one ``ours`` server; per round and per count N
(alternating order), N other programs are made live (one short tagged call each, left acting,
never released) and the same tagged workload runs beside them (the same 8 calls in flight);
reports the scheduler's CPU ms per request at each N and the ratio to the smallest N; saves
benchmarks/results/overhead_programs.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "overhead.json"
PROGRAMS_RESULTS = Path(__file__).parent / "results" / "overhead_programs.json"
CORPUS = REPO / "thunderagent_sglang" / "demo_corpus.txt"
WORKERS = 8
SYSTEM_PROMPT = (
    "You are a coding agent. You run shell commands, read and edit files, and "
    "report what you changed. Keep answers short and use the tools you are given."
)
SYSTEMS = {  # name: (environment, chats tagged as programs)
    "plain": ({"THUNDERAGENT_DISABLE": "1"}, False),
    "ours": ({}, False),
    "ours-tagged": ({}, True),
}
EXPECTED_CORE = {"plain": "RustUnifiedTreeCore", "ours": "ProgramTreeCore",
                 "ours-tagged": "ProgramTreeCore"}
# --python-floor: plain SGLang on its own Python tree core, what any Python tree costs here
PYTHON_FLOOR = ("plain-python", {"THUNDERAGENT_DISABLE": "1",
                                 "SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND": "python"},
                "UnifiedTreeCore")
FLOOR_RESULTS = Path(__file__).parent / "results" / "overhead_python_floor.json"


def fresh_log_dir() -> Path:
    """A directory of this run's own: the tree-core check reads each server's log, and a log
    appended to by an earlier run on the machine held two such lines."""
    return Path(tempfile.mkdtemp(prefix="thunderagent-overhead-"))


def tree_core(server: Server) -> str:
    """The tree core class SGLang logged for the server's cache."""
    found = re.findall(r"Init Unified Radix Cache\. .*Tree Core: (\w+)", server.log())
    if len(found) != 1:
        raise RuntimeError(f"{server.name}: expected one tree-core line, found {found}")
    return found[0]


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


def run_chat(url: str, turns: list[tuple[str, int]], program_id: str | None) -> tuple[int, int, int]:
    """Play one chat; (requests, prompt tokens, cached prompt tokens)."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    prompt = cached = 0
    with requests.Session() as http:
        if program_id is not None:
            http.headers["X-Program-Id"] = program_id
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
        if program_id is not None:
            http.post(f"{url}/programs/release", json={"program_id": program_id},
                      timeout=60).raise_for_status()
    return len(turns), prompt, cached


def scheduler_process(server: Server) -> psutil.Process:
    for pid in server.descendants():
        proc = psutil.Process(pid)
        if "sglang::scheduler" in " ".join(proc.cmdline()):
            return proc
    raise RuntimeError(f"no scheduler process under {server.name}")


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def run_workload(server: Server, seed: int, conversations: int, words: list[str],
                 tagged: bool) -> dict:
    requests.post(f"{server.url}/flush_cache", timeout=60).raise_for_status()
    scheduler = scheduler_process(server)
    rng = random.Random(seed)
    chats = [[conversation(words, rng) for _ in range(conversations)] for _ in range(WORKERS)]

    def worker(index: int) -> tuple[int, int, int]:
        totals = [0, 0, 0]
        for n, turns in enumerate(chats[index]):
            program_id = f"bench-{seed}-{index}-{n}" if tagged else None
            for i, count in enumerate(run_chat(server.url, turns, program_id)):
                totals[i] += count
        return tuple(totals)

    start, cpu_start = time.monotonic(), cpu_seconds(scheduler)
    with ThreadPoolExecutor(WORKERS) as pool:
        results = list(pool.map(worker, range(WORKERS)))
    seconds, cpu = time.monotonic() - start, cpu_seconds(scheduler) - cpu_start
    done, prompt, cached = (sum(r[i] for r in results) for i in range(3))
    return {"requests": done, "seconds": round(seconds, 2), "requests_per_s": round(done / seconds, 3),
            "scheduler_cpu_ms_per_request": round(1000 * cpu / done, 2),
            "prompt_tokens": prompt, "cached_fraction": round(cached / prompt, 3)}


def make_live(server: Server, prefix: str, count: int) -> None:
    """``count`` programs with one short call each, left live and acting."""
    def one(i: int) -> None:
        requests.post(f"{server.url}/generate", headers={"X-Program-Id": f"{prefix}-{i}"}, json={
            "input_ids": [3 + (i * 7 + j) % 1500 for j in range(48)],
            "sampling_params": {"max_new_tokens": 1}}, timeout=120).raise_for_status()

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(count)))


def release_all(server: Server, prefix: str, count: int) -> None:
    for i in range(count):
        requests.post(f"{server.url}/programs/release", json={"program_id": f"{prefix}-{i}"},
                      timeout=60)


def live_program_counts(args, extra: list[str]) -> None:
    """The scheduler's CPU per request with N live programs beside the same workload."""
    log_dir = fresh_log_dir()
    server = Server("ours", ["--enable-cache-report", *extra], {}, log_dir)
    words, rows = corpus_words(), []
    try:
        server.wait_ready()
        run_workload(server, seed=-1, conversations=1, words=words, tagged=True)
        for rnd in range(args.rounds):
            counts = args.live_programs if rnd % 2 == 0 else args.live_programs[::-1]
            for count in counts:
                prefix = f"live-{rnd}-{count}"
                make_live(server, prefix, count)
                live = sum(p["status"] != "terminated" for p in requests.get(
                    f"{server.url}/programs", timeout=60).json()["programs"])
                row = {"live_programs": count, "live_before_run": live, "round": rnd,
                       **run_workload(server, seed=rnd, conversations=args.conversations,
                                      words=words, tagged=True)}
                release_all(server, prefix, count)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        server.stop()
    base = min(args.live_programs)

    def cpu_of(count: int, rnd: int) -> float:
        return next(r["scheduler_cpu_ms_per_request"] for r in rows
                    if r["live_programs"] == count and r["round"] == rnd)

    rounds = range(args.rounds)
    cpu = {n: statistics.median(cpu_of(n, rnd) for rnd in rounds) for n in args.live_programs}
    per_round = {n: [round(cpu_of(n, rnd) / cpu_of(base, rnd), 3) for rnd in rounds]
                 for n in args.live_programs}
    summary = {"scheduler_cpu_ms_per_request_median": cpu,
               f"ratio_to_{base}_per_round": per_round,
               f"ratio_to_{base}_median": {n: round(statistics.median(v), 3)
                                           for n, v in per_round.items()}}
    print(json.dumps(summary, indent=1))
    PROGRAMS_RESULTS.write_text(json.dumps({
        "command": " ".join(["benchmarks/overhead.py", *sys.argv[1:]]), "workers": WORKERS,
        "runs": rows, "summary": summary}, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--conversations", type=int, default=40, help="chats per worker and run")
    parser.add_argument("--live-programs", type=int, nargs="+", metavar="N",
                        help="measure growth with the number of live programs instead")
    parser.add_argument("--python-floor", action="store_true",
                        help="add plain SGLang on its Python tree core (a fourth server): "
                             "what of our overhead any Python tree costs; saves "
                             "benchmarks/results/overhead_python_floor.json instead")
    args, extra = parser.parse_known_args()
    if args.live_programs:
        return live_program_counts(args, extra)
    systems, expected, results = dict(SYSTEMS), dict(EXPECTED_CORE), RESULTS
    if args.python_floor:
        name, env, core = PYTHON_FLOOR
        systems[name], expected[name], results = (env, False), core, FLOOR_RESULTS
    log_dir = fresh_log_dir()
    base = ["--enable-cache-report", *extra]
    servers = {name: Server(name, base, env, log_dir) for name, (env, _) in systems.items()}
    words = corpus_words()
    rows = []
    try:
        cores = {name: tree_core(server.wait_ready()) for name, server in servers.items()}
        print(json.dumps({"tree_core": cores}), flush=True)
        if cores != expected:
            raise RuntimeError(f"the servers do not run the caches compared here: {cores}")
        for name, server in servers.items():  # warm-up, not measured
            run_workload(server, seed=-1, conversations=1, words=words, tagged=systems[name][1])
        for rnd in range(args.rounds):
            order = list(servers) if rnd % 2 == 0 else list(servers)[::-1]
            for name in order:
                row = {"system": name, "round": rnd,
                       **run_workload(servers[name], seed=rnd, conversations=args.conversations,
                                      words=words, tagged=systems[name][1])}
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    summary = summarize(rows, list(systems))
    print(json.dumps(summary, indent=1))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "machine": {"cpus": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30),
                    "python": platform.python_version(), "platform": platform.platform()},
        "command": " ".join(["benchmarks/overhead.py", *sys.argv[1:]]),
        "tree_core": cores, "workers": WORKERS, "extra_flags": extra,
        "runs": rows, "summary": summary}, indent=1))


def summarize(rows: list[dict], names: list[str]) -> dict:
    rounds = sorted({r["round"] for r in rows})

    def value(key, name, rnd):
        return next(r[key] for r in rows if r["system"] == name and r["round"] == rnd)

    def compare(key):
        out = {"median": {name: round(statistics.median(value(key, name, rnd) for rnd in rounds), 3)
                          for name in names}}
        for name in names:
            if name == "plain":
                continue
            ratios = [value(key, name, rnd) / value(key, "plain", rnd) for rnd in rounds]
            out[f"ratio_{name}_over_plain_per_round"] = [round(x, 3) for x in ratios]
            out[f"ratio_{name}_over_plain_median"] = round(statistics.median(ratios), 3)
        return out

    # Wall-clock rates move with whatever else runs on the machine; the
    # scheduler's CPU time per request much less so.
    return {"requests_per_s": compare("requests_per_s"),
            "scheduler_cpu_ms_per_request": compare("scheduler_cpu_ms_per_request")}


if __name__ == "__main__":
    main()
