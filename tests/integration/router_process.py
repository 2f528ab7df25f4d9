"""``python -m thunderagent_sglang.router`` as a subprocess with a log file (tests and the
router benchmarks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import requests

from tests.integration.server import REPO, free_port, wait_until


class RouterProcess:
    def __init__(self, backends: list[str], log_dir: Path, *extra: str, name: str = "router"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_dir / f"{name}.log", "w")
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thunderagent_sglang.router", "--backends", ",".join(backends),
             "--port", str(self.port), "--log-level", "debug", *extra],
            cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, replicas: int) -> "RouterProcess":
        def ready():
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                body = requests.get(f"{self.url}/health", timeout=2).json()
            except requests.RequestException:
                return False
            return body.get("ready_replicas") == replicas
        wait_until(ready, "the router sees its replicas", 30)
        return self

    def status(self) -> dict:
        return requests.get(f"{self.url}/router/replicas", timeout=5).json()

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self._log.close()


def stop_process(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
