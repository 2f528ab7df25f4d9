"""A real sidecar process per test (``python -m thunderagent_sglang.sidecar``), real HTTP.

Each sidecar gets its own root under pytest's tmp dir; teardown stops it, then asserts and
enforces that no mount is left under the root.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from thunderagent_sglang.sidecar import disk
from thunderagent_sglang.sidecar.errors import BackendUnavailable
from thunderagent_sglang.sidecar.local_backend import LocalBackend

TOKEN = "test-token"
REPO = Path(__file__).resolve().parents[2]


def local_backend_missing() -> str | None:
    try:
        LocalBackend("/tmp/thunderagent-sidecar-probe").probe()
        return None
    except BackendUnavailable as exc:
        return str(exc)


MISSING = local_backend_missing()
needs_local = pytest.mark.skipif(MISSING is not None, reason=f"local backend: {MISSING}")


class Sidecar:
    def __init__(self, root: Path, args: list[str], env_extra: dict | None = None,
                 wrap: list[str] | None = None):
        self.root = root
        env = {**os.environ, "THUNDERAGENT_SIDECAR_TOKEN": TOKEN, **(env_extra or {})}
        url_file = root / "url"
        if url_file.exists():
            url_file.unlink()
        self.log = open(root.parent / f"{root.name}.log", "ab")
        self.proc = subprocess.Popen(
            [*(wrap or []), sys.executable, "-m", "thunderagent_sglang.sidecar",
             "--root", str(root), "--port", "0", *args],
            cwd=REPO, env=env, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 30
        while not url_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sidecar did not start: {self.read_log()[-2000:]}")
            time.sleep(0.05)
        self.url = url_file.read_text().strip()
        self.http = httpx.Client(base_url=self.url, timeout=60,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
        self._wait_ready()

    def _wait_ready(self) -> None:
        for _ in range(200):
            try:
                if self.http.get("/stats").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise RuntimeError("sidecar never answered /stats")

    def read_log(self) -> str:
        self.log.flush()
        return (self.root.parent / f"{self.root.name}.log").read_text(errors="replace")

    def create(self, base: Path, program_id: str = "p1", **extra) -> dict:
        reply = self.http.post("/envs", json={"program_id": program_id, "base_dir": str(base),
                                              **extra})
        assert reply.status_code == 201, reply.text
        return reply.json()

    def exec(self, env_id: str, cmd: str, timeout: float = 20, **extra) -> dict:
        reply = self.http.post(f"/envs/{env_id}/exec",
                               json={"cmd": cmd, "timeout": timeout, **extra})
        assert reply.status_code == 200, reply.text
        return reply.json()

    def mounts_under(self, path) -> list[str]:
        """Mount points at or below ``path`` in the sidecar's own mount namespace."""
        return disk.mounts_under(str(path), f"/proc/{self.proc.pid}/mountinfo")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.http.close()

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def command_lines() -> dict[int, bytes]:
    """pid -> command line of every process now (one that exits meanwhile is left out)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found[int(pid)] = open(f"/proc/{pid}/cmdline", "rb").read()
        except OSError:
            continue
    return found


def sleepers(*seconds: int) -> list[int]:
    """Pids of running ``sleep N`` processes for these N (the tests' markers)."""
    marks = tuple(f"sleep\x00{n}".encode() for n in seconds)
    return [pid for pid, cmdline in command_lines().items() if cmdline.startswith(marks)]


@pytest.fixture
def base(tmp_path) -> Path:
    """A small base tree shared read-only by every clone (under the tests' --base-root)."""
    root = tmp_path / "bases" / "base"
    (root / "pkg").mkdir(parents=True)
    (root / "README").write_text("base readme\n")
    (root / "pkg" / "mod.py").write_text("X = 1\n")
    return root


@pytest.fixture
def start_sidecar(tmp_path):
    started: list[Sidecar] = []

    def start(*args: str, name: str = "root", env_extra: dict | None = None,
              wrap: list[str] | None = None) -> Sidecar:
        """``wrap``: a command line the sidecar's own is appended to (e.g. ``unshare ...``)."""
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        if "--base-root" not in args:  # the tests' bases live beside the roots
            args = ("--base-root", str(tmp_path / "bases"), *args)
        sidecar = Sidecar(root, list(args), env_extra, wrap)
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in started:
        sidecar.stop()
    leftovers = []
    for sidecar in started:
        leftovers += disk.unmount_all_under(str(sidecar.root))  # enforce, then report
        leftovers += disk.loop_devices_under(str(sidecar.root))
    assert leftovers == [], f"mounts or loop devices left behind: {leftovers}"


@pytest.fixture
def sidecar(start_sidecar) -> Sidecar:
    if MISSING:
        pytest.skip(f"local backend: {MISSING}")
    return start_sidecar()
