"""``python -m benchmarks COMMAND``: the agent-serving benchmark suite.

    run [--quick] [--mode serve|rollout|chat] ...   every system, one after another (see run --help)
    report OUT                                     gather OUT's points: summary.json, table, plots
    calibrate                                      time a cache miss against a hit on the model
    trace --programs N --out FILE                  write generated programs as an agentic_mooncake trace

The older single-purpose benchmarks stay scripts: ``benchmarks/overhead.py``,
``benchmarks/startup.py``, ``benchmarks/sidecar_disk.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def write_trace(argv: list[str]) -> None:
    from benchmarks.agentic import trace
    from benchmarks.agentic.workload import WorkloadSpec, rollout_batch, serving_program

    p = argparse.ArgumentParser(prog="python -m benchmarks trace")
    p.add_argument("--programs", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rollout-group-size", type=int, help="write a GRPO batch in groups of this size")
    p.add_argument("--block-size", type=int, default=trace.DEFAULT_BLOCK_SIZE)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    spec = WorkloadSpec()
    if args.rollout_group_size:
        programs = rollout_batch(spec, args.seed, args.programs, args.rollout_group_size)
    else:
        programs = [serving_program(spec, args.seed, 0, i) for i in range(args.programs)]
    rows = trace.write(args.out, programs, args.block_size)
    print(f"wrote {rows} calls of {len(programs)} programs to {args.out}")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        return
    command, rest = sys.argv[1], sys.argv[2:]
    if command == "run":
        from benchmarks.agentic.runner import main as run
        run(rest)
    elif command == "report":
        from benchmarks.agentic.runner import finish
        if len(rest) != 1:
            raise SystemExit("usage: python -m benchmarks report OUT")
        finish(Path(rest[0]))
    elif command == "calibrate":
        from benchmarks.agentic.calibrate import main as calibrate
        calibrate(rest)
    elif command == "trace":
        write_trace(rest)
    else:
        raise SystemExit(f"unknown command {command!r}; python -m benchmarks --help lists them")


if __name__ == "__main__":
    main()
