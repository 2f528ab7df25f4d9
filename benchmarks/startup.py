"""Launch-to-ready time and resident memory of a server on the demo model.

    .venv/bin/python benchmarks/startup.py [--runs 2] [extra launcher flags...]

Starts ``python -m thunderagent_sglang.launch_server`` with ours on, then with
THUNDERAGENT_DISABLE=1 (plain SGLang), alternating, and reports per run the
seconds from process start to the first 200 of /health_generate and the summed
RSS of the server's process tree once ready. Saves benchmarks/results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.server import Server  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "startup.json"


def measure(name: str, extra: list[str], env: dict[str, str], log_dir: Path) -> dict:
    start = time.monotonic()
    server = Server(name, extra, env, log_dir)
    try:
        server.wait_ready()
        ready_s = time.monotonic() - start
        procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
        rss = sum(p.memory_info().rss for p in procs)
        return {"system": name, "ready_s": round(ready_s, 2), "rss_gib": round(rss / 2**30, 2),
                "processes": len(procs)}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    args, extra = parser.parse_known_args()
    log_dir = Path("/tmp/thunderagent-startup")
    log_dir.mkdir(exist_ok=True)
    rows = []
    for run in range(args.runs):
        for name, env in (("thunderagent", {}), ("plain", {"THUNDERAGENT_DISABLE": "1"})):
            row = measure(name, extra, env, log_dir)
            row["run"] = run
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        name: {key + "_median": round(statistics.median(r[key] for r in rows if r["system"] == name), 2)
               for key in ("ready_s", "rss_gib")}
        for name in ("thunderagent", "plain")
    }
    print(json.dumps(summary, indent=1))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30),
                    "python": platform.python_version(), "platform": platform.platform()},
        "extra_flags": extra, "runs": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
