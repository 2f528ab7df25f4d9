"""Tool-environment disk and start latency: program-aware lifecycle vs a program-unaware one.

    .venv/bin/python benchmarks/sidecar_disk.py [--programs 40] [--write-mb 20] [--base-mb 200]
    .venv/bin/python benchmarks/sidecar_disk.py --sweep [20,40,80]

Needs root (the local backend: overlayfs + namespaces). One generated base repository of
``--base-mb`` MB (incompressible files) is shared read-only by every environment. ``--programs``
programs arrive every ``--arrival-s`` seconds; each creates an environment over the base
(timed: start latency), writes ``--write-mb`` MB in it, thinks for ``--think-s`` and finishes.

- ``aware``: the server's "terminated" event destroys the program's environments at once.
- ``unaware``: the same copy-on-write engine, but an orchestrator that knows nothing of
  programs: environments are cleaned only when the whole run ends.

Peak disk is the largest ``du -sxB1`` of the sidecar root (upper dirs: what the environments
really wrote), sampled every 50 ms, plus the shared base once. The unaware peak grows with the
number of programs (base + N x write), the aware one with the programs alive at once (base +
concurrency x write), so their ratio depends on N: ``--sweep`` runs the comparison at several
program counts, all else equal, and reports the ratio at each. Then the preparation test:
``--prep-programs`` programs each declare a lazy environment with a setup step (writing
``--setup-mb`` MB, a stand-in for a dependency install); on resume, either the
first exec materializes it, or a "prepare" event sent ``--lead-s`` before the program's
request (as the scheduler does for the next paused programs) has it ready. The figure is the
time the resumed program waits for its environment (its first exec minus a warm exec).
Saves benchmarks/results/sidecar_disk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results" / "sidecar_disk.json"
REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench"
STARTED: list = []  # every sidecar, stopped in main's finally even after an error
DEFAULT_SWEEP = "20,40,80"
TARGET_RATIO = 4.2  # the paper's peak-disk reduction


def make_base(path: Path, total_mb: int) -> int:
    """A repository-like tree: 100 packages of equal-size random files."""
    per_file = 256 << 10
    files = total_mb * (1 << 20) // per_file
    for i in range(files):
        d = path / f"pkg{i % 100}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.bin").write_bytes(os.urandom(per_file))
    return du(path)


def du(path: Path) -> int:
    out = subprocess.run(["du", "-sxB1", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0]) if out else 0


class Sidecar:
    def __init__(self, root: Path, base_root: Path):
        root.mkdir(parents=True, exist_ok=True)
        (root / "url").unlink(missing_ok=True)
        self.root = root
        STARTED.append(self)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thunderagent_sglang.sidecar", "--root", str(root),
             "--port", "0", "--gc-interval", "0.5", "--base-root", str(base_root)], cwd=REPO,
            env={**os.environ, "THUNDERAGENT_SIDECAR_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (root / "url").exists():
            if self.proc.poll() is not None:
                raise SystemExit("the sidecar did not start (root needed: run as root)")
            time.sleep(0.05)
        self.http = httpx.Client(base_url=(root / "url").read_text().strip(), timeout=300,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        while True:
            try:
                self.http.get("/stats")
                break
            except httpx.TransportError:
                time.sleep(0.05)

    def post(self, path: str, **body) -> dict:
        reply = self.http.post(path, json=body)
        reply.raise_for_status()
        return reply.json()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()  # a clean stop destroys its environments and mounts
            self.proc.wait(60)


class PeakSampler(threading.Thread):
    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.peak, self.samples, self._done = root, 0, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, du(self.root))
            self.samples += 1
            self._done.wait(0.05)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak, du(self.root))


def run_lifecycle(mode: str, programs: int, base: Path, work: Path, args) -> dict:
    sidecar = Sidecar(work / f"root-{mode}-{programs}", base.parent)
    sampler = PeakSampler(sidecar.root)
    sampler.start()
    latencies: list[float] = []
    lock = threading.Lock()

    def program(i: int) -> None:
        time.sleep(max(0.0, t0 + i * args.arrival_s - time.monotonic()))
        start = time.monotonic()
        env = sidecar.post("/envs", program_id=f"{mode}-{i}", base_dir=str(base))["env_id"]
        with lock:
            latencies.append(time.monotonic() - start)
        out = sidecar.post(f"/envs/{env}/exec", cmd=f"head -c {args.write_mb}M /dev/urandom "
                           "> result.bin && sync -f result.bin", timeout=120)
        assert out["exit_code"] == 0, out
        time.sleep(args.think_s)
        if mode == "aware":
            sidecar.post("/events", program_id=f"{mode}-{i}", event="terminated")

    t0 = time.monotonic()
    with ThreadPoolExecutor(programs) as pool:
        list(pool.map(program, range(programs)))
    run_s = time.monotonic() - t0
    peak = sampler.stop()
    for env in sidecar.http.get("/envs").json()["envs"]:  # the end-of-run cleanup
        sidecar.http.delete(f"/envs/{env['env_id']}")
    left = du(sidecar.root)
    sidecar.stop()
    latencies.sort()
    return {
        "mode": mode, "programs": programs, "run_s": round(run_s, 2), "peak_env_bytes": peak,
        "peak_disk_bytes": peak + args.base_bytes, "bytes_after_cleanup": left,
        "start_latency_ms": {"median": round(1000 * statistics.median(latencies), 1),
                             "p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1)},
        "du_samples": sampler.samples,
    }


def run_prepare(base: Path, work: Path, args) -> dict:
    sidecar = Sidecar(work / "root-prepare", base.parent)
    setup = (f"mkdir -p deps && head -c {args.setup_mb}M /dev/urandom > deps/lib.bin "
             "&& sync -f deps/lib.bin")
    waits: dict[str, list[float]] = {"without_prepare": [], "with_prepare": []}
    for i in range(args.prep_programs):
        for case in waits:
            env = sidecar.post("/envs", program_id=f"{case}-{i}", base_dir=str(base), lazy=True,
                               setup=setup)["env_id"]
            sidecar.post("/events", program_id=f"{case}-{i}", event="paused")
            if case == "with_prepare":
                sidecar.post("/events", program_id=f"{case}-{i}", event="prepare")
                time.sleep(args.lead_s)  # the scheduler admits the request this much later
            start = time.monotonic()
            sidecar.post(f"/envs/{env}/exec", cmd="true", timeout=120)
            first = time.monotonic() - start
            start = time.monotonic()
            sidecar.post(f"/envs/{env}/exec", cmd="true", timeout=120)
            warm = time.monotonic() - start
            waits[case].append(max(0.0, first - warm))
            sidecar.post("/events", program_id=f"{case}-{i}", event="terminated")
    sidecar.stop()
    return {case: {"median_ms": round(1000 * statistics.median(v), 1),
                   "max_ms": round(1000 * max(v), 1)} for case, v in waits.items()}


def compare(programs: int, base: Path, work: Path, args) -> dict:
    """Unaware then aware lifecycle for ``programs`` programs, and their peak-disk ratios."""
    runs = [run_lifecycle(mode, programs, base, work, args) for mode in ("unaware", "aware")]
    for row in runs:
        print(json.dumps(row), flush=True)
    unaware, aware = runs
    return {
        "programs": programs, "runs": runs,
        "peak_disk_ratio_unaware_over_aware": round(
            unaware["peak_disk_bytes"] / aware["peak_disk_bytes"], 2),
        "peak_env_bytes_ratio": round(unaware["peak_env_bytes"]
                                      / max(1, aware["peak_env_bytes"]), 2),
        "full_copy_bytes_for_reference": programs * (args.base_bytes + args.write_mb * 2**20),
    }


def summarize(comparisons: list[dict]) -> dict:
    ratios = {str(c["programs"]): c["peak_disk_ratio_unaware_over_aware"] for c in comparisons}
    return {
        "peak_disk_ratio_by_programs": ratios,
        "peak_disk_mb_by_programs": {
            str(c["programs"]): {r["mode"]: round(r["peak_disk_bytes"] / 2**20)
                                 for r in c["runs"]} for c in comparisons},
        "target_ratio": TARGET_RATIO,
        "programs_reaching_target": [int(n) for n, r in ratios.items() if r >= TARGET_RATIO],
    }


def parse_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give program counts like 20,40,80") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give positive program counts like 20,40,80")
    return counts


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--programs", type=int, default=40)
    p.add_argument("--sweep", type=parse_counts, nargs="?", const=parse_counts(DEFAULT_SWEEP),
                   default=None, help="compare at each of these program counts instead of "
                   f"--programs (default when given alone: {DEFAULT_SWEEP})")
    p.add_argument("--base-mb", type=int, default=200)
    p.add_argument("--write-mb", type=int, default=20)
    p.add_argument("--arrival-s", type=float, default=0.25)
    p.add_argument("--think-s", type=float, default=0.5)
    p.add_argument("--prep-programs", type=int, default=5)
    p.add_argument("--setup-mb", type=int, default=50)
    p.add_argument("--lead-s", type=float, default=1.0)
    p.add_argument("--out", default=str(RESULTS), help="where the JSON goes")
    p.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the local backend mounts overlays")
    counts = args.sweep or [args.programs]
    work = Path(args.work or tempfile.mkdtemp(prefix="sidecar-bench-"))
    try:
        base = work / "bases" / "base"  # --base-root: work/bases (beside, not above, the roots)
        args.base_bytes = make_base(base, args.base_mb)
        print(f"base: {args.base_bytes / 2**20:.0f} MiB in {base}", flush=True)
        comparisons = [compare(n, base, work, args) for n in counts]
        prepare = run_prepare(base, work, args)
        print(json.dumps({"prepare": prepare}), flush=True)
    finally:
        for sidecar in STARTED:
            sidecar.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = summarize(comparisons)
    print(json.dumps(summary, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {k: v for k, v in vars(args).items()
              if k not in ("work", "out") and not (k == "programs" and args.sweep)}
    out.write_text(json.dumps({
        "command": " ".join(["benchmarks/sidecar_disk.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": params, "comparisons": comparisons, "prepare": prepare, "summary": summary},
        indent=1))


if __name__ == "__main__":
    main()
