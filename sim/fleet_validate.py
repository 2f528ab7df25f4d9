"""The fleet simulator against the committed fleet benchmark: fit once, predict the rest.

    python -m sim fleet-validate [--out benchmarks/results/sim/fleet-validation.json]

The measured runs (``benchmarks/results/agentic/fleet/``): two replicas of the demo model on
this machine, each pinned to one core, 16384-token pools (the limit's 262144), 32 programs
kept running (60 s warm-up, 180 s window), and a rollout batch of 32 programs in groups of 4;
fronts: SGLang's gateway, the published proxy, our router, the limit behind the gateway.

The cost model is the single engine's (``validation.json``: fitted on the calibration and
plain SGLang at N=16 on both cores) with its loaded-machine factor replaced by the fleet's,
measured on one run, the gateway's serving point: SGLang's ``run_batch`` seconds summed over
both replicas in the window, against the batch-1 model's cost of the window's calls (one core
per replica, and the front beside them). Everything else is predicted: the other three fronts
in serving, all four in rollout. Trusted as the single engine's: where the same-run ratios
(ours / gateway, ours / proxy, ours / limit) land within 10% of the measured ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks.agentic import workload
from sim import fit
from sim.costs import StepCost
from sim.fleet import Fleet
from sim.fronts import Gateway, ProxyFront, Router
from sim.policies import Plain, Thunder
from sim.validate import ratio_cells

FLEET = Path("benchmarks/results/agentic/fleet")
VALIDATION = Path("benchmarks/results/sim/validation.json")
OUT = Path("benchmarks/results/sim/fleet-validation.json")
SYSTEMS = {"gateway": (Gateway, Plain, False), "proxy": (ProxyFront, Plain, False),
           # as measured: decay always on (before --thunderagent-decay and its default auto)
           "ours-router": (Router, lambda: Thunder(decay="on"), False),
           "limit": (Gateway, Plain, True)}
RATIOS = (("ours-router", "gateway"), ("ours-router", "proxy"), ("ours-router", "limit"),
          ("proxy", "gateway"))
BLOCK = 32


def simulate(system: str, config: dict, cost: StepCost, *, rollout: bool) -> dict:
    front, policy, limit = SYSTEMS[system]
    pools, spec = config["pools"], workload.WorkloadSpec(**config["workload"])
    n, seed = config["concurrency"][0], config["seed"]
    source = None
    if rollout:
        batch = workload.rollout_batch(spec, seed, n, config["group_size"])
        source = lambda slot, index: None if index else batch[slot]  # noqa: E731
    fleet = Fleet(front(), policy, replicas=config["replicas"],
                  capacity_tokens=pools["limit_tokens" if limit else "device_tokens"],
                  block=BLOCK, cost=cost, spec=spec, seed=seed, slots=n, source=source)
    if rollout:
        stats = fleet.run(24 * 3600.0)
        end = stats.finished[-1] if stats.finished else 0.0
        start = 0.0
        figures = {"steps_per_min": round(len(stats.finished) * 60 / end, 2) if end else 0.0,
                   "makespan_s": round(end, 1)}
    else:
        start, end = config["warmup_s"], config["warmup_s"] + config["window_s"]
        stats = fleet.run(end)
        figures = {"steps_per_min": round(stats.calls_per_min(start, end), 2)}
    return {**figures, "kv_hit_rate": round(stats.hit_rate(start, end), 4),
            "kv_imbalance": round(stats.imbalance(start, end), 4),
            "migrations": stats.migrations}


def fleet_cost(config: dict, gateway_point: dict) -> tuple[StepCost, dict]:
    """The single engine's fitted cost with the fleet's loaded-machine factor."""
    single = json.loads(VALIDATION.read_text())
    cost = StepCost(**single["cost"])
    base_factor = single["fit"]["load_factor"]["factor"]
    batch1, step, _ = fit.fit_single(fit.calibration_rows(Path(single["calibration"])))
    start = config["warmup_s"]
    loaded = fit.load_factor(batch1, step, gateway_point, start, start + config["window_s"])
    ratio = loaded["factor"] / base_factor
    return fit.scaled(cost, ratio), {**loaded, "single_engine_factor": base_factor,
                                     "cost_scaled_by": round(ratio, 4)}


def measured(folder: Path, mode: str, system: str, n: int) -> dict:
    data = json.loads((folder / "points" / f"{mode}-c{n}-{system}.json").read_text())
    f = data["figures"]
    keys = ("steps_per_min", "kv_hit_rate", "kv_imbalance", "migrations") + (
        ("makespan_s",) if mode == "rollout" else ())
    return {k: f.get(k) for k in keys}, data


def validate(fleet_dir: Path = FLEET) -> dict:
    serve_cfg = json.loads((fleet_dir / "serve" / "config.json").read_text())["configuration"]
    n = serve_cfg["concurrency"][0]
    _, gateway = measured(fleet_dir / "serve", "serve", "gateway", n)
    cost, factor = fleet_cost(serve_cfg, gateway)
    table = {"what": __doc__.split("\n\n")[0], "fleet": str(fleet_dir), "block": BLOCK,
             "cost": cost.to_json(), "fit": {"load_factor": factor,
                                             "fitted_on": "gateway, serving"}}
    for mode in ("serve", "rollout"):
        config = json.loads((fleet_dir / mode / "config.json").read_text())["configuration"]
        n = config["concurrency"][0]
        row = {"mode": mode, "concurrency": n, "replicas": config["replicas"]}
        for system in SYSTEMS:
            row[system] = {"measured": measured(fleet_dir / mode, mode, system, n)[0],
                           "predicted": simulate(system, config, cost,
                                                 rollout=mode == "rollout")}
        ratio_cells(row, RATIOS)
        table[mode] = row
    return table


def summary(table: dict) -> str:
    lines = []
    for mode in ("serve", "rollout"):
        row = table[mode]
        cells = [f"{s} measured {row[s]['measured']['steps_per_min']} predicted "
                 f"{row[s]['predicted']['steps_per_min']} (hit {row[s]['measured']['kv_hit_rate']}"
                 f" vs {row[s]['predicted']['kv_hit_rate']})" for s in SYSTEMS]
        ratios = [f"{num}/{den} {row[f'{num}/{den}']['measured']} vs "
                  f"{row[f'{num}/{den}']['predicted']} ({row[f'{num}/{den}']['ratio_error']:+.1%})"
                  for num, den in RATIOS]
        lines.append(f"{mode}: " + "; ".join(cells + ratios))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim fleet-validate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", type=Path, default=FLEET,
                        help="the fleet benchmark's results (serve/ and rollout/ inside)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    needed = [args.fleet / m / "config.json" for m in ("serve", "rollout")] + [VALIDATION]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"error: missing {', '.join(missing)} (python -m benchmarks run --replicas 2 "
              "writes the fleet results; python -m sim validate the single engine's table)",
              file=sys.stderr)
        return 2
    table = validate(args.fleet)
    print(summary(table))
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1) + "\n")
    except OSError as error:
        print(f"error: cannot write {args.out}: {error}", file=sys.stderr)
        return 2
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
