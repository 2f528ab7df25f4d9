"""``python -m sim run``: simulate agent programs on one engine, each system in turn.

    python -m sim run [--systems plain ours limit] [--slots 16] [--minutes 10] [--seed 0]
        [--capacity 16384] [--block 32] [--cost benchmarks/results/sim/validation.json]
    python -m sim replay FILE
    python -m sim project [--workloads ...] [--loads ...]   (sim/project.py: GPU projections)
    python -m sim fleet-validate [--fleet DIR] [--out ...]  (sim/fleet_validate.py: replicas)
    python -m sim fleet-project [--programs 144] ...  (sim/fleet_project.py: GPU rollout, fronts)
    python -m sim validate [--calibration benchmarks/results/sim/calibration.json]
        [--points benchmarks/results/agentic/sweep-serve/points] [--out ...validation.json]

Systems: ``sim/policies.py``. Prints, per system, calls (the benchmark's "steps") per minute over the run after its first
minute, the prefix-cache hit rate, pauses and evictions, and the wall time the simulation took.
``run`` steps by the cost model the validation fitted on this CPU (``--cost``: a validation
table; ``--cost none`` for ``sim/costs.py``'s placeholders).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.agentic import workload
from sim.costs import StepCost
from sim.engine import Engine
from sim.policies import EvictionOnly, Plain, Proxy, Thunder, Ttl, median_tool_wait

POLICIES = {"plain": Plain, "ours": Thunder, "limit": Plain, "ours-sched-off": EvictionOnly,
            "ttl": lambda: Ttl(median_tool_wait(workload.WorkloadSpec(), 0)), "proxy": Proxy}


RESULTS = Path("benchmarks/results/sim")


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def simulate(system: str, *, slots: int, minutes: float, seed: int, capacity: int,
             block: int, cost: StepCost = StepCost(), settings: dict | None = None,
             decay: str = "auto") -> dict:
    """``settings``: our scheduler's ``SchedulerConfig`` fields (ours, ours-sched-off);
    ``decay``: ours' ``--thunderagent-decay``."""
    spec = workload.WorkloadSpec()
    if system == "limit":  # a pool that holds the whole run: never evicts
        capacity = slots * 64 * spec.max_context_tokens
    policy = POLICIES[system]()
    if isinstance(policy, Thunder) and not isinstance(policy, Proxy):
        policy.settings, policy.decay_mode = settings or {}, decay
    engine = Engine(policy, capacity_tokens=capacity, block=block, seed=seed, slots=slots,
                    spec=spec, cost=cost)
    started = time.perf_counter()
    stats = engine.run(minutes * 60.0)
    return {"system": system, "calls_per_min": round(stats.calls_per_min(60.0, minutes * 60.0), 1),
            "hit_rate": round(stats.hit_rate(), 4), "steps": stats.steps,
            "program_p50_s": _rounded(stats.program_seconds(60.0, minutes * 60.0, 0.5)),
            "program_p95_s": _rounded(stats.program_seconds(60.0, minutes * 60.0, 0.95)),
            "rejected_calls": stats.rejected,
            "evicted_blocks": engine.cache.evicted, "pauses": getattr(policy, "pauses", 0),
            "wall_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["project"]:  # its own flags: python -m sim project --help
        from sim import project

        return project.main(args[1:])
    if args[:1] == ["fleet-validate"]:
        from sim import fleet_validate

        return fleet_validate.main(args[1:])
    if args[:1] == ["fleet-project"]:
        from sim import fleet_project

        return fleet_project.main(args[1:])
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="simulate each system and print its figures")
    run.add_argument("--systems", nargs="+", choices=sorted(POLICIES),
                     default=["plain", "ours", "limit"],
                     help="plain (LRU), ours, ours-sched-off (our eviction only), ttl "
                          "(Continuum-style pinning), proxy (the published proxy's rule), "
                          "limit (a pool that never evicts)")
    run.add_argument("--slots", type=int, default=16, help="concurrent agent programs")
    run.add_argument("--minutes", type=float, default=10.0, help="simulated minutes")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--capacity", type=int, default=16384, help="KV pool, tokens")
    run.add_argument("--block", type=int, default=32,
                     help="cache block, tokens (default 32: the block the validation fitted "
                     "its costs at)")
    run.add_argument("--seeds", type=int, default=1,
                     help="run seeds --seed .. --seed + N - 1 and print their mean too")
    run.add_argument("--half-life", type=float, help="ours: the decay half-life, s")
    run.add_argument("--decay", choices=("auto", "on", "off"), default="auto",
                     help="ours: --thunderagent-decay (default auto)")
    run.add_argument("--no-decay", action="store_true", help="ours: --decay off")
    run.add_argument("--watermarks", type=float, nargs=2, metavar=("HIGH", "LOW"),
                     help="ours: the scheduler's watermarks, fractions of the pool")
    run.add_argument("--resume-order", choices=("smallest", "attained"),
                     help="ours: --thunderagent-resume-order")
    run.add_argument("--out", type=Path, help="save every row and the means as JSON")
    run.add_argument("--cost", default=str(RESULTS / "validation.json"),
                     help="a validation table whose fitted cost model steps the engine, or "
                          "'none' for the placeholder model")
    again = sub.add_parser("replay", help="replay a server's decision trace "
                           "(--thunderagent-decision-trace) through the simulator's policy")
    again.add_argument("trace", type=Path)
    check = sub.add_parser("validate", help="fit the cost model once, predict the measured "
                           "runs, save the table")
    check.add_argument("--calibration", type=Path,
                       default=RESULTS / "calibration.json",
                       help="python -m benchmarks calibrate output (several prompt sizes)")
    check.add_argument("--points", type=Path,
                       default=Path("benchmarks/results/agentic/sweep-serve/points"),
                       help="the runner's point files (serve-c<N>-<system>.json)")
    check.add_argument("--rollout-points", type=Path,
                       default=Path("benchmarks/results/agentic/quick-rollout/points"),
                       help="the runner's rollout point files (rollout-c<N>-<system>.json); "
                            "'none' to skip")
    check.add_argument("--block", type=int, default=32, help="cache block, tokens")
    check.add_argument("--out", type=Path, default=RESULTS / "validation.json")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args)
    if args.command == "replay":
        return _replay(args.trace)
    if args.minutes <= 1 or args.slots < 1 or args.capacity < args.block or args.block < 1:
        parser.error("need --minutes > 1, --slots >= 1 and --capacity >= --block >= 1")
    try:
        cost = _cost(args.cost)
    except (OSError, ValueError, KeyError, TypeError) as error:
        parser.error(f"--cost {args.cost}: not a validation table ({error}); "
                     "python -m sim validate writes one")
    if args.seeds < 1 or (args.half_life is not None and not args.half_life > 0):
        parser.error("need --seeds >= 1 and --half-life > 0")
    settings = _settings(args)
    if "high_watermark" in settings and not 0 < settings["low_watermark"] <= \
            settings["high_watermark"]:
        parser.error("--watermarks HIGH LOW: need 0 < LOW <= HIGH")
    rows, means = [], {}
    for system in args.systems:
        runs = [simulate(system, slots=args.slots, minutes=args.minutes, seed=seed,
                         capacity=args.capacity, block=args.block, cost=cost,
                         settings=settings, decay="off" if args.no_decay else args.decay)
                for seed in range(args.seed, args.seed + args.seeds)]
        for seed, row in enumerate(runs, args.seed):
            rows.append({**row, "seed": seed})
            print(rows[-1], flush=True)
        means[system] = {key: round(statistics.mean(r[key] for r in runs), 3)
                         for key in ("calls_per_min", "hit_rate", "program_p50_s",
                                     "program_p95_s") if all(r[key] is not None for r in runs)}
        if args.seeds > 1:
            print({"system": system, "mean_of_seeds": args.seeds, **means[system]}, flush=True)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": "python -m sim " + " ".join(
            argv if argv is not None else sys.argv[1:]), "settings": settings,
            "decay": "off" if args.no_decay else args.decay, "block": args.block,
            "capacity": args.capacity, "minutes": args.minutes, "rows": rows,
            "means": means}, indent=1) + "\n")
        print(f"saved {args.out}")
    return 0


def _settings(args) -> dict:
    settings = {}
    if args.half_life is not None:
        settings["half_life_s"] = args.half_life
    if args.watermarks:
        settings["high_watermark"], settings["low_watermark"] = args.watermarks
    if args.resume_order:
        settings["resume_order"] = args.resume_order
    return settings


def _cost(path: str) -> StepCost:
    if path == "none":
        return StepCost()
    return StepCost(**json.loads(Path(path).read_text())["cost"])


def _replay(path: Path) -> int:
    from sim.replay import Unsupported, read, replay

    try:
        result = replay(read(path))
    except (OSError, ValueError, KeyError, TypeError) as error:  # Unsupported is a ValueError
        kind = "not replayable" if isinstance(error, Unsupported) else "not a decision trace"
        print(f"error: {path}: {kind}: {error}", file=sys.stderr)
        return 2
    print(f"{result.events} events, {result.checks} decisions (the engine's: "
          + ", ".join(f"{n} {k}" for k, n in result.decided.items())
          + f"); {len(result.differences)} differences")
    for difference in result.differences[:20]:
        print(json.dumps(difference))
    return 1 if result.differences else 0


def _validate(args) -> int:
    from sim.validate import validate

    for path in (args.calibration, args.points):
        if not path.exists():
            print(f"error: {path} does not exist (python -m benchmarks calibrate --prompt-tokens "
                  "512 1024 2048 4096 8192 --out ... writes a calibration)", file=sys.stderr)
            return 2
    rollout = None if str(args.rollout_points) == "none" else args.rollout_points
    if rollout is not None and not rollout.exists():
        print(f"error: {rollout} does not exist (--rollout-points none skips the rollout)",
              file=sys.stderr)
        return 2
    table = validate(args.calibration, args.points, block=args.block, rollout_points=rollout)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(json.dumps(table["cost"]))
    for row in table["cells"]:
        print(f"N={row['concurrency']}: " + "; ".join(
            f"{s} measured {row[s]['measured']['steps_per_min']} predicted "
            f"{row[s]['predicted']['steps_per_min']} steps/min" for s in ("plain", "ours", "limit"))
            + "; " + "; ".join(f"{k} {row[k]['measured']} vs {row[k]['predicted']} "
                               f"({row[k]['ratio_error']:+.1%})" for k in (
                                   "ours/plain", "ours/limit", "sched-off/plain",
                                   "priority/plain", "hicache/plain", "ours-auto/hicache",
                                   "ours-auto/limit")))
    if "rollout" in table:
        row = table["rollout"]
        print(f"rollout N={row['concurrency']}: " + "; ".join(
            f"{s} measured {row[s]['measured']['steps_per_min']} predicted "
            f"{row[s]['predicted']['steps_per_min']} steps/min" for s in ("plain", "ours",
                                                                          "limit"))
            + "; " + "; ".join(f"{k} {row[k]['measured']} vs {row[k]['predicted']} "
                               f"({row[k]['ratio_error']:+.1%})" for k in ("ours/plain",
                                                                          "ours/limit")))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
