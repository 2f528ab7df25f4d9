"""``python -m benchmarks run``: every system, one after another, on one workload.

For each load (concurrency, or batch size in rollouts) and each system, in that
order: start the system's server (a fresh process: no run inherits another's
cache), play the workload, stop it, and save the point to
``OUT/points/<mode>-c<N>-<system>.json``. A point whose file exists is not run
again, so an interrupted sweep resumes where it stopped. ``OUT/config.json``
(machine, versions, the whole configuration) is written before the first run;
resuming with a different configuration is refused. At the end (and by
``python -m benchmarks report OUT``) the points are gathered into
``OUT/summary.json``, a table and plots.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.agentic import fleet, plots, report, trace
from benchmarks.agentic import server as servers
from benchmarks.agentic.calibrate import MODEL_SPEC, RESULTS, model_dir
from benchmarks.agentic.player import Player, Recorder, rollout, serve
from benchmarks.agentic.systems import Pools, System, by_name
from benchmarks.agentic.workload import (PRESETS, Program, chat_program, preset_spec,
                                         rollout_batch, serving_program)

QUICK = {"concurrency": [16], "warmup": 30.0, "window": 60.0}
FULL = {"concurrency": [4, 8, 16, 24, 32], "warmup": 60.0, "window": 180.0}
CHAT_SYSTEMS = ["plain", "ours-offload-off"]
STAGGER_MAX_S = 2.0  # serving slots start this far apart at most, within the first half of the warm-up


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help=f"one load ({QUICK['concurrency'][0]}), {QUICK['warmup']:g} s warm-up, "
                        f"{QUICK['window']:g} s window: every system in under 15 minutes on 2 cores")
    p.add_argument("--mode", choices=("serve", "rollout", "chat"), default="serve",
                   help="serve: N programs kept running; rollout: a batch of N programs in "
                        "GRPO groups, started at once; chat: plain multi-turn chat, no program ids")
    p.add_argument("--concurrency", type=int, nargs="+", help="loads N (default: quick or full sweep)")
    p.add_argument("--systems", nargs="+", help="a subset, by name (default: all; chat: plain and ours)")
    p.add_argument("--warmup", type=float, help="seconds before the window opens (serve, chat)")
    p.add_argument("--window", type=float, help="seconds of the measured window (serve, chat)")
    p.add_argument("--group-size", type=int, default=4, help="samples per task in rollouts")
    p.add_argument("--preset", choices=PRESETS, default="default",
                   help="the workload: default (log-normal tool gaps, unchanged), or tools (gaps "
                        "by named tool type, scaled so the longest is a third of the window; "
                        "the player names each tool in a hint)")
    p.add_argument("--device-tokens", type=int, default=16384, help="device KV pool (tokens)")
    p.add_argument("--host-ratio", type=float, default=1.0,
                   help="host tier, times the device pool (issue: no larger than the pool)")
    p.add_argument("--write-policy", choices=("write_through", "write_back"),
                   default="write_back",
                   help="SGLang's --hicache-write-policy for both host-tier systems (plain HiCache "
                        "and ours with offload). Default write_back: the host tier holds only what "
                        "leaves the device, so a host budget equal to the pool adds to it; "
                        "write_through (SGLang's default) keeps a host copy of what the device "
                        "holds, which fills such a budget with duplicates")
    p.add_argument("--limit-tokens", type=int, default=262144, help="the limit system's pool")
    p.add_argument("--replicas", type=int, default=1,
                   help="fleet mode when above 1: that many replicas per system, each pinned to "
                        "its share of the cores, behind a front (systems: gateway, proxy, "
                        "ours-router, limit; chat calls; benchmarks/fleet_baselines.sh installs "
                        "the baselines)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-flags", default="",
                   help="extra launcher flags for our systems only, e.g. \"--thunderagent-high-"
                        "watermark 0.9\" (a tuning sweep: give each setting its own --out)")
    p.add_argument("--sglang-metrics", action="store_true",
                   help="serve with --enable-metrics and record SGLang's scheduler time by stage "
                        "(forward vs the rest of the loop) per point")
    p.add_argument("--trace", type=Path, help="replay this agentic_mooncake trace instead of generating")
    p.add_argument("--block-size", type=int, default=trace.DEFAULT_BLOCK_SIZE, help="the trace's block size")
    p.add_argument("--cache-dir", type=Path, help="where the model is built (default: the demo-model cache)")
    p.add_argument("--out", type=Path, help="results folder (default: benchmarks/results/agentic/<quick|full>-<mode>)")
    p.add_argument("--background", action="store_true", help="run detached, logging to OUT/run.log")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.concurrency = args.concurrency or preset["concurrency"]
    args.warmup = preset["warmup"] if args.warmup is None else args.warmup
    args.window = preset["window"] if args.window is None else args.window
    if args.systems is None and args.mode == "chat":
        args.systems = CHAT_SYSTEMS
    suffix = "" if args.preset == "default" else f"-{args.preset}"
    if args.replicas > 1:
        suffix += f"-fleet{args.replicas}"
    args.out = args.out or RESULTS / f"{'quick' if args.quick else 'full'}-{args.mode}{suffix}"
    return args


def configuration(args: argparse.Namespace, pools: Pools) -> dict:
    """What must match for points to be compared (every system's definition, not the
    subset run now: a sweep may be run a few systems at a time into one folder)."""
    return {"mode": args.mode, "concurrency": args.concurrency, "warmup_s": args.warmup,
            "window_s": args.window, "group_size": args.group_size, "seed": args.seed,
            "sglang_metrics": args.sglang_metrics, "ours_flags": args.ours_flags,
            "trace": str(args.trace) if args.trace else None, "block_size": args.block_size,
            "workload": dataclasses.asdict(preset_spec(args.preset, args.window)),
            "pools": dataclasses.asdict(pools), "replicas": args.replicas,
            "model_spec": dataclasses.asdict(MODEL_SPEC),
            "systems": [{**dataclasses.asdict(s), "args": list(s.args)}
                        for s in table_of(args, pools, None)]}


def write_config(out: Path, config: dict) -> None:
    path = out / "config.json"
    if path.exists():
        before = json.loads(path.read_text())["configuration"]
        if before != json.loads(json.dumps(config)):  # as saved: tuples are lists there
            raise SystemExit(f"{path} holds another configuration; resume with the same flags, "
                             "or pass another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": servers.machine(), "versions": servers.versions(),
                                "configuration": config}, indent=1))


def program_source(args: argparse.Namespace, replayed: list[Program] | None):
    """``next_program(slot, index)`` for serving modes."""
    spec = preset_spec(args.preset, args.window)
    if replayed is not None:
        return lambda slot, index: replayed[(slot + index * max(args.concurrency)) % len(replayed)]
    if args.mode == "chat":
        return lambda slot, index: chat_program(args.seed, slot, index)
    return lambda slot, index: serving_program(spec, args.seed, slot, index)


def table_of(args, pools: Pools, names):
    return fleet.by_name(pools, names) if args.replicas > 1 else by_name(pools, names)


async def play_point(url: str, system: System, args, n: int, replayed, scheds,
                     replica_urls: list[str], text=None) -> dict:
    player = Player(url, system.call_fields, tagged=args.mode != "chat", text=text,
                    id_in_body=system.id_in_body)
    label = f"{args.mode} N={n} {system.name}"
    marks: dict = {}
    usage: list = []
    views: list = []  # our router's GET /router/replicas, sampled with the usage

    async def mark(key: str, delay: float) -> None:
        await asyncio.sleep(delay)
        metrics: dict = {}
        for replica in replica_urls:
            for k, v in (await servers.sample_metrics(player.http, replica)).items():
                metrics[k] = metrics.get(k, 0.0) + v
        marks[key] = (metrics, sum(servers.cpu_seconds(s) for s in scheds),
                      await router_counters(player.http, url, system))

    async def sample_usage() -> None:
        await asyncio.sleep(args.warmup if args.mode != "rollout" else 0)
        while True:
            usage.append(await fleet.kv_usage(player.http, replica_urls))
            if system.front == "router":
                views.append(await fleet.router_view(player.http, url))
            await asyncio.sleep(1.0)

    sampler = asyncio.create_task(sample_usage()) if len(replica_urls) > 1 else None

    try:
        if args.mode == "rollout":
            batch = replayed[:n] if replayed else rollout_batch(
                preset_spec(args.preset, args.window), args.seed, n, args.group_size)
            await mark("start", 0)
            rec: Recorder = await rollout(player, batch, label)
            figures = report.rollout_figures(rec)
        else:
            opener = asyncio.create_task(mark("start", args.warmup))
            rec = await serve(player, program_source(args, replayed), n, args.warmup + args.window, label,
                              stagger_s=min(STAGGER_MAX_S, args.warmup / (2 * n)))
            await opener
            figures = report.serving_figures(rec, args.warmup, args.window)
        if sampler is not None:
            sampler.cancel()
        await mark("end", 0)
    finally:
        if sampler is not None:
            sampler.cancel()
        await player.aclose()
    (m0, cpu0, r0), (m1, cpu1, r1) = marks["start"], marks["end"]
    if system.front == "router":
        figures = {**figures, **fleet.staleness(views)}
    if len(replica_urls) > 1:
        figures = {**figures, **fleet.imbalance(usage),
                   "migrations": (r1 or {}).get("migrations", 0) - (r0 or {}).get("migrations", 0)
                   if r1 else None}
    return {"figures": figures, "server_metrics": report.metric_deltas(m0, m1) if m1 else {},
            "scheduler_cpu_ms_per_call": round(1000 * (cpu1 - cpu0) / figures["calls"], 1)
            if figures["calls"] else None,
            "calls": [dataclasses.astuple(c) for c in rec.calls],
            "programs": [dataclasses.astuple(p) for p in rec.programs],
            **({"kv_usage_samples": usage} if len(replica_urls) > 1 else {})}


async def router_counters(http, url: str, system: System) -> dict | None:
    if system.front != "router":
        return None
    status = await fleet.router_view(http, url)
    return status.get("counters") if status else None


def run_point(system: System, args, n: int, model: Path, replayed) -> dict:
    started = time.time()
    tag = f"{args.mode}-c{n}"
    if args.replicas > 1 or system.front:  # a front in front of its replicas
        group = fleet.start(system, args.replicas, model, args.out / "logs", tag)
        try:
            result = asyncio.run(play_point(
                group.url, system, args, n, replayed,
                [servers.scheduler_process(r) for r in group.replicas],
                [r.url for r in group.replicas], text=detokenizer(model)))
        finally:
            group.stop()
        return {"mode": args.mode, "concurrency": n, "system": system.name,
                "label": system.label, "started_at": round(started),
                "seconds": round(time.time() - started, 1), **result}
    server = servers.start(system, model, args.out / "logs", tag, args.sglang_metrics)
    try:
        result = asyncio.run(play_point(server.url, system, args, n, replayed,
                                        [servers.scheduler_process(server)], [server.url]))
    finally:
        server.stop()
    return {"mode": args.mode, "concurrency": n, "system": system.name, "label": system.label,
            "started_at": round(started), "seconds": round(time.time() - started, 1), **result}


def detokenizer(model: Path):
    """Token ids -> text with the model's own tokenizer (fleet mode's chat messages)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    return lambda ids: tokenizer.decode(list(ids))


def with_flags(systems: list[System], flags: list[str]) -> list[System]:
    """Our systems with ``flags`` appended (later flags win in argparse)."""
    return [dataclasses.replace(s, args=(*s.args, *flags)) if s.ours and flags else s
            for s in systems]


def load_points(out: Path) -> list[dict]:
    points = [json.loads(p.read_text()) for p in sorted((out / "points").glob("*.json"))]
    for p in points:
        p.pop("calls", None), p.pop("programs", None)
    return points


def finish(out: Path) -> None:
    """Gather the points into summary.json, print the table, draw the plots."""
    config = json.loads((out / "config.json").read_text())
    order = {s["name"]: i for i, s in enumerate(config["configuration"]["systems"])}
    points = sorted(load_points(out), key=lambda p: (p["mode"], p["concurrency"], order.get(p["system"], 99)))
    points = report.with_limit_fractions(points)
    (out / "summary.json").write_text(json.dumps({**config, "points": points}, indent=1))
    print(report.table(points), flush=True)
    drawn = plots.draw(points, out)
    print("plots: " + (", ".join(str(p) for p in drawn) if drawn else "none (matplotlib not installed)"))
    print(f"summary: {out / 'summary.json'}")


def background(argv: list[str], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "run.log", "a")
    argv = [a for a in argv if a != "--background"]
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "run", *argv], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[2])
    print(f"running in the background as pid {proc.pid}; log {out / 'run.log'}; "
          f"run the same command again to resume after an interruption")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[2:] if argv is None else argv
    args = parse(argv)
    if args.background:
        return background(argv, args.out)
    pools = Pools(args.device_tokens, args.host_ratio, args.limit_tokens, args.write_policy)
    systems = with_flags(table_of(args, pools, args.systems), shlex.split(args.ours_flags))
    write_config(args.out, configuration(args, pools))
    replayed = trace.read(args.trace, args.block_size, args.seed) if args.trace else None
    model = model_dir(args.cache_dir)
    (args.out / "points").mkdir(exist_ok=True)
    todo = [(n, s) for n in args.concurrency for s in systems
            if not (args.out / "points" / f"{args.mode}-c{n}-{s.name}.json").exists()]
    print(f"{len(todo)} point(s) to run, {len(args.concurrency) * len(systems) - len(todo)} done; "
          f"results in {args.out}", flush=True)
    for i, (n, system) in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {args.mode} N={n} {system.name}: starting the server", flush=True)
        point = run_point(system, args, n, model, replayed)
        path = args.out / "points" / f"{args.mode}-c{n}-{system.name}.json"
        path.write_text(json.dumps(point))
        f = point["figures"]
        print(f"[{i}/{len(todo)}] {system.name} N={n}: {f['steps_per_min']} steps/min, hit rate "
              f"{f['kv_hit_rate']}, {f['calls']} calls, {point['seconds']} s", flush=True)
    finish(args.out)
