"""Connecting to Ray: the cluster at ``--address``, else a local one (started here when none
runs, and remembered so that ``cluster down`` stops only what ``up`` started)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # the fleet passes only small records through Ray


def state_path(log_dir: str, fleet: str) -> Path:
    return Path(log_dir) / fleet / "fleet.json"


def read_state(log_dir: str, fleet: str) -> dict:
    try:
        return json.loads(state_path(log_dir, fleet).read_text())
    except (OSError, ValueError):
        return {}


def write_state(log_dir: str, fleet: str, state: dict) -> None:
    path = state_path(log_dir, fleet)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1))


def _ray_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args],
                          capture_output=True, text=True, timeout=180)


def connect(address: str | None, start_if_none: bool) -> tuple[str, bool]:
    """Connect this process to Ray. Returns (the GCS address, whether a local head was started
    here). Without an address: the local cluster if one runs, else (``start_if_none``) a new
    local head; RuntimeError when none can be reached."""
    import ray

    started = False
    if address is None and not _local_running():
        if not start_if_none:
            raise RuntimeError("no Ray cluster runs on this machine; pass --address")
        done = _ray_cli("start", "--head", "--include-dashboard=false",
                        "--disable-usage-stats", f"--num-cpus={os.cpu_count() or 1}",
                        f"--object-store-memory={OBJECT_STORE_BYTES}")
        if done.returncode != 0:
            raise RuntimeError(f"could not start a local Ray cluster:\n{done.stderr[-2000:]}")
        started = True
    ray.init(address=address or "auto", namespace="thunderagent", logging_level="WARNING",
             log_to_driver=False)
    return ray.get_runtime_context().gcs_address, started


def _local_running() -> bool:
    return _ray_cli("status").returncode == 0


def stop_local() -> bool:
    """``ray stop`` on this machine (only for a head that ``up`` started)."""
    return _ray_cli("stop").returncode == 0
