"""The simulator against measured runs: fit once, then predict every other cell.

The cost model is fitted on the calibration (``sim.fit``) and on the measured plain SGLang run
at N=16 (its scheduler's busy time, then its steps per minute); every other cell (plain at N=8 and 32, ours with offload off and the no-eviction limit
at each N) is a prediction. Each cell simulates the runner's serving configuration: the same
seeded programs (``benchmarks.agentic.workload``), the same pool (16384 tokens; the limit's
262144), the same warm-up and window, steps per minute and hit rate over the window's calls.
The simulator is trusted only where its same-run ratios (ours / plain, ours / limit) are within
10% of the measured ones (``ratio_error``: predicted ratio over measured, less 1). Also
predicted: ours with the scheduler off (our eviction only) against plain, and plain with
SGLang's priority eviction against plain (every call at one priority: the same LRU, so its
measured ratio is the run-to-run spread of the measurements themselves). With SGLang's host
tier (``--hicache-ratio``, write-back): plain SGLang with it against without, ours with
offload on against it, and against the limit; the host tier is modelled as write-back at
eviction with loads back costing nothing on this CPU (a token's KV of the demo model is about
1 KiB: microseconds against a millisecond of prefill); ours' keep/offload/drop at a pause runs
through ``policy.offload.decide`` (``sim.policies.Thunder``), its host ranks keeping live
programs' KV longest.
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.agentic import workload
from sim import fit
from sim.costs import StepCost
from sim.engine import Engine
from sim.policies import EvictionOnly, Plain, Thunder
from sim.rollout import run_rollout

MEASURED = {"plain": "plain", "ours": "ours-offload-off", "limit": "limit",
            "sched-off": "ours-sched-off", "priority": "plain-priority",
            "hicache": "plain-hicache", "ours-auto": "ours-offload-auto"}
HOST_TIER = ("hicache", "ours-auto")  # with SGLang's host tier (--hicache-ratio x the pool)
# plain-priority runs every program call at one priority: SGLang's priority eviction is then
# its LRU, so the simulator predicts it as plain, and its measured ratio to plain shows how
# far two runs of one policy differ here
def _decay_on() -> Thunder:
    """Ours as the committed runs were measured: decay always on (before --thunderagent-decay
    existed; its default auto turns it off on this CPU)."""
    return Thunder(decay="on")


POLICY = {"plain": Plain, "ours": _decay_on, "limit": Plain, "sched-off": EvictionOnly,
          "priority": Plain, "hicache": Plain, "ours-auto": _decay_on}
RATIOS = (("ours", "plain"), ("ours", "limit"), ("sched-off", "plain"), ("priority", "plain"),
          ("hicache", "plain"), ("ours-auto", "hicache"), ("ours-auto", "limit"))


def simulate_cell(system: str, slots: int, cost: StepCost, *, seed: int, capacity: int,
                  limit_capacity: int, block: int, warmup_s: float, window_s: float,
                  host_ratio: float = 1.0) -> dict:
    engine = Engine(POLICY[system](), capacity_tokens=limit_capacity if system == "limit"
                    else capacity, block=block, cost=cost, seed=seed, slots=slots,
                    spec=workload.WorkloadSpec(),
                    host_tokens=int(capacity * host_ratio) if system in HOST_TIER else 0)
    stats = engine.run(warmup_s + window_s)
    end = warmup_s + window_s
    return {"steps_per_min": round(stats.calls_per_min(warmup_s, end), 2),
            "kv_hit_rate": round(stats.hit_rate(warmup_s, end), 4)}


def _point(points: Path, system: str, slots: int) -> dict:
    return json.loads((points / f"serve-c{slots}-{MEASURED[system]}.json").read_text())


def measured_cell(points: Path, system: str, slots: int) -> dict:
    data = _point(points, system, slots)
    return {"steps_per_min": data["figures"]["steps_per_min"],
            "kv_hit_rate": data["figures"]["kv_hit_rate"]}


def validate(calibration: Path, points: Path, *, loads=(8, 16, 32), block: int = 32,
             rollout_points: Path | None = None) -> dict:
    config = json.loads((points.parent / "config.json").read_text())["configuration"]
    pools = config["pools"]
    settings = dict(seed=config["seed"], capacity=pools["device_tokens"],
                    limit_capacity=pools["limit_tokens"], block=block,
                    warmup_s=config["warmup_s"], window_s=config["window_s"],
                    host_ratio=pools["host_ratio"])
    single, step, single_fit = fit.fit_single(fit.calibration_rows(calibration))
    plain16 = measured_cell(points, "plain", 16)["steps_per_min"]
    loaded = fit.load_factor(single, step, _point(points, "plain", 16), settings["warmup_s"],
                             settings["warmup_s"] + settings["window_s"])
    single, step = fit.scaled(single, loaded["factor"]), step * loaded["factor"]
    cost, tried = fit.fit_split(single, step, plain16, lambda c: simulate_cell(
        "plain", 16, c, **settings)["steps_per_min"])
    cells = []
    for slots in loads:
        row = {"concurrency": slots}
        for system in MEASURED:
            row[system] = {"measured": measured_cell(points, system, slots),
                           "predicted": simulate_cell(system, slots, cost, **settings)}
        ratio_cells(row, RATIOS)
        cells.append(row)
    table = {"what": __doc__.split("\n\n")[0], "calibration": str(calibration),
             "points": str(points), "settings": settings, "cost": cost.to_json(),
             "fit": {"batch1": single_fit, "load_factor": loaded, "split_tried": tried,
                     "fitted_on": "calibration, and plain at N=16 "
                                  f"({plain16} steps/min measured)"},
             "cells": cells}
    if rollout_points is not None:
        table["rollout"] = validate_rollout(rollout_points, cost, block)
    return table


def ratio_cells(row: dict, ratios) -> None:
    """Each same-run ratio, measured and predicted, its error and whether it is trusted."""
    for num, den in ratios:
        m = row[num]["measured"]["steps_per_min"] / row[den]["measured"]["steps_per_min"]
        p = row[num]["predicted"]["steps_per_min"] / row[den]["predicted"]["steps_per_min"]
        row[f"{num}/{den}"] = {"measured": round(m, 3), "predicted": round(p, 3),
                               "ratio_error": round(p / m - 1, 3),
                               "trusted": abs(p / m - 1) <= 0.10}


def validate_rollout(points: Path, cost: StepCost, block: int) -> dict:
    """The committed rollout run (a GRPO batch started at once, until it ends), predicted with
    the cost model fitted on the serving runs: nothing is fitted on it."""
    config = json.loads((points.parent / "config.json").read_text())["configuration"]
    pools, spec = config["pools"], workload.WorkloadSpec(**config["workload"])
    row = {"mode": "rollout", "concurrency": config["concurrency"][0],
           "group_size": config["group_size"]}
    for system in ("plain", "ours", "limit"):
        data = json.loads((points / f"rollout-c{row['concurrency']}-{MEASURED[system]}.json")
                          .read_text())["figures"]
        predicted = run_rollout(POLICY[system], spec, cost, programs=row["concurrency"],
                                group_size=row["group_size"], seed=config["seed"],
                                capacity=pools["limit_tokens"] if system == "limit"
                                else pools["device_tokens"], block=block)
        row[system] = {"measured": {k: data[k] for k in ("steps_per_min", "kv_hit_rate",
                                                         "makespan_s")},
                       "predicted": {k: predicted[k] for k in ("steps_per_min", "kv_hit_rate",
                                                               "makespan_s")}}
    ratio_cells(row, (("ours", "plain"), ("ours", "limit")))
    return row
