"""Environment start and exec latency of the sidecar's local backend: an earlier revision
against this tree, side by side in one run.

    .venv/bin/python benchmarks/sidecar_start.py [--before b572db8] [--envs 40] [--rounds 2]

The earlier revision is checked out into a temporary git worktree and its sidecar run from
there; rounds alternate (before, after, before, after...) so that drift on a shared machine
hits both. Each round starts a fresh sidecar, creates ``--envs`` environments one after another
over the same base (timed: start latency, the create request to its 201), runs ``true`` in each
(timed: exec latency), then destroys them. Needs root. Saves
benchmarks/results/sidecar_start.json.
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
import time
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "results" / "sidecar_start.json"
REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench"
DEFAULT_BEFORE = "b572db8"  # main before the sidecar-hardening issue
TARGET_MS = {"median": 20.0, "p95": 50.0}


def start_sidecar(code_dir: Path, root: Path, base_root: Path) -> tuple[subprocess.Popen, str]:
    root.mkdir(parents=True, exist_ok=True)
    (root / "url").unlink(missing_ok=True)
    args = [sys.executable, "-m", "thunderagent_sglang.sidecar", "--root", str(root),
            "--port", "0"]
    if "--base-root" in subprocess.run(args[:3] + ["--help"], cwd=code_dir, text=True,
                                       capture_output=True).stdout:
        args += ["--base-root", str(base_root)]
    proc = subprocess.Popen(args, cwd=code_dir, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                            env={**os.environ, "THUNDERAGENT_SIDECAR_TOKEN": TOKEN,
                                 "PYTHONPATH": str(code_dir)})
    deadline = time.monotonic() + 60
    while not (root / "url").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the sidecar of {code_dir} did not start (run as root)")
        time.sleep(0.05)
    return proc, (root / "url").read_text().strip()


def one_round(code_dir: Path, root: Path, base: Path, envs: int) -> dict[str, list[float]]:
    proc, url = start_sidecar(code_dir, root, base.parent)
    starts, execs = [], []
    try:
        with httpx.Client(base_url=url, timeout=120,
                          headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            for _ in range(200):
                try:
                    http.get("/stats")
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            ids = []
            for i in range(envs):
                t0 = time.perf_counter()
                reply = http.post("/envs", json={"program_id": f"p{i}", "base_dir": str(base)})
                starts.append(time.perf_counter() - t0)
                reply.raise_for_status()
                ids.append(reply.json()["env_id"])
            for env in ids:
                t0 = time.perf_counter()
                out = http.post(f"/envs/{env}/exec", json={"cmd": "true"}).json()
                execs.append(time.perf_counter() - t0)
                assert out["exit_code"] == 0, out
            for env in ids:
                http.delete(f"/envs/{env}")
    finally:
        proc.terminate()
        proc.wait(60)
    return {"start": starts, "exec": execs}


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median": round(1000 * statistics.median(ordered), 1),
            "p95": round(1000 * ordered[int(0.95 * (len(ordered) - 1))], 1), "n": len(ordered)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--before", default=DEFAULT_BEFORE, help="the earlier revision (git)")
    p.add_argument("--envs", type=int, default=40)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the local backend mounts overlays")
    work = Path(tempfile.mkdtemp(prefix="sidecar-start-"))
    before_dir = work / "before"
    subprocess.run(["git", "worktree", "add", "--detach", str(before_dir), args.before],
                   cwd=REPO, check=True, capture_output=True)
    try:
        base = work / "bases" / "base"
        for i in range(200):  # a small repository: 200 files in 20 packages
            (base / f"pkg{i % 20}").mkdir(parents=True, exist_ok=True)
            (base / f"pkg{i % 20}" / f"m{i}.py").write_text(f"X = {i}\n" * 50)
        samples = {"before": {"start": [], "exec": []}, "after": {"start": [], "exec": []}}
        for r in range(args.rounds):
            for label, code_dir in (("before", before_dir), ("after", REPO)):
                got = one_round(code_dir, work / f"root-{label}-{r}", base, args.envs)
                for kind, values in got.items():
                    samples[label][kind] += values
                print(label, r, {k: summary(v) for k, v in got.items()}, flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(before_dir)], cwd=REPO,
                       capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    result = {label: {kind: summary(v) for kind, v in kinds.items()}
              for label, kinds in samples.items()}
    result["after_over_before"] = {
        kind: round(result["after"][kind]["median"] / result["before"][kind]["median"], 2)
        for kind in ("start", "exec")}
    result["target_ms"] = TARGET_MS
    result["start_within_target"] = all(result["after"]["start"][k] <= v
                                        for k, v in TARGET_MS.items())
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": " ".join(["benchmarks/sidecar_start.py", *sys.argv[1:]]),
        "before": args.before, "after": _head(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "params": {"envs": args.envs, "rounds": args.rounds}, "result": result}, indent=1))


def _head() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                          capture_output=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           text=True, capture_output=True).stdout.strip()
    return done.stdout.strip() + ("+changes" if dirty else "")


if __name__ == "__main__":
    main()
