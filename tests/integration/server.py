"""A real SGLang server started through our launcher, for integration tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 300
# SGLang's idle KV-leak check, as logged under THUNDERAGENT_DEBUG_MEMCHECK=1.
CHECK_LINE = re.compile(
    r"idle memory check: leak=(\w+) \[full\] total=(\d+), available=(\d+), "
    r"evictable=(\d+), protected=(\d+), session_held=(\d+), uncached=(\d+)")
CHECK_KEYS = ("total", "available", "evictable", "protected", "session_held", "uncached")


def series(metrics: str, prefix: str) -> float:
    """The sum of a Prometheus text's samples whose line starts with ``prefix``."""
    return sum(float(line.split()[-1]) for line in metrics.splitlines()
               if line.startswith(prefix))


def wait_until(check, what: str, deadline_s: float = 30.0, every_s: float = 0.1):
    """``check()``'s first truthy value, polled every ``every_s``; AssertionError naming
    ``what`` after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not within {deadline_s:g} s: {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``python -m thunderagent_sglang.launch_server`` with a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path,
                 port: int | None = None, prefix: tuple[str, ...] = ()):
        self.name = name
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_dir / f"{name}.log"
        full_env = {**os.environ, "THUNDERAGENT_DEBUG_MEMCHECK": "1", **env}
        cmd = [*prefix, sys.executable, "-m", "thunderagent_sglang.launch_server",
               "--port", str(self.port), *args]
        self._log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> "Server":
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/health_generate", timeout=30).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        raise RuntimeError(f"{self.name} not ready in {READY_TIMEOUT_S}s:\n{self.tail()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def idle_checks(self) -> list[dict]:
        return [dict(leak=m[0], **dict(zip(CHECK_KEYS, map(int, m[1:]))))
                for m in CHECK_LINE.findall(self.log())]

    def last_idle_check_after(self, before: int, timeout_s: float = 60.0) -> dict:
        """The idle check the scheduler settles on after ``before`` earlier ones."""
        deadline = time.monotonic() + timeout_s
        while len(self.idle_checks()) <= before:
            if time.monotonic() > deadline:
                raise AssertionError(f"no idle memory check came:\n{self.tail()}")
            time.sleep(0.5)
        time.sleep(2)  # let the scheduler settle into its final idle state
        return self.idle_checks()[-1]

    def descendants(self) -> set[int]:
        return {p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
