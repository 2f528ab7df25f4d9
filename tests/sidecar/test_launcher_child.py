"""The sidecar as the launcher's child (engine/sidecar_process.py): real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import psutil

from thunderagent_sglang.engine import sidecar_process
from thunderagent_sglang.sidecar import disk
from tests.sidecar.conftest import REPO, needs_local

pytestmark = needs_local
NO_TOKEN = {k: v for k, v in os.environ.items() if k != "THUNDERAGENT_SIDECAR_TOKEN"}
# A launcher stand-in: starts the sidecar, prints its pid, then waits to be killed.
LAUNCHER = """
import sys, time
from pathlib import Path
from thunderagent_sglang.engine import sidecar_process
s = sidecar_process.start(Path(sys.argv[1]), ["--port", "31997"])
print(s.proc.pid, flush=True)
time.sleep(600)
"""


def test_started_sidecar_answers_only_its_token_and_stops_cleanly(tmp_path, base):
    sidecar = sidecar_process.start(tmp_path, ["--port", "31998", "--api-key", "k"], NO_TOKEN,
                                    sidecar_process.sidecar_options((str(base.parent),)))
    try:
        root = tmp_path / "sidecar" / "31998"
        assert sidecar.url.startswith("http://127.0.0.1:")
        assert sidecar.token_file == root / "token"
        assert sidecar.token_file.read_text() == sidecar.token + "\n"
        auth = {"Authorization": f"Bearer {sidecar.token}"}
        assert httpx.get(f"{sidecar.url}/stats", headers=auth).status_code == 200
        assert httpx.get(f"{sidecar.url}/stats").status_code == 401
        created = httpx.post(f"{sidecar.url}/envs", headers=auth, timeout=30,
                             json={"program_id": "p", "base_dir": str(base)})
        assert created.status_code == 201, created.text
        assert disk.mounts_under(str(root), f"/proc/{sidecar.proc.pid}/mountinfo") != []
        assert disk.mounts_under(str(root)) == []  # in the sidecar's own mount namespace only
    finally:
        sidecar.stop()
    assert sidecar.proc.returncode == -signal.SIGTERM  # uvicorn re-raises it after shutdown
    assert disk.loop_devices_under(str(root)) == []  # its environments went with it
    assert os.listdir(root / "envs") == []


def test_sidecar_stops_when_its_launcher_is_killed_9(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)], cwd=REPO,
                                env=NO_TOKEN, stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = psutil.Process(int(launcher.stdout.readline()))
        assert child.ppid() == launcher.pid
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        gone, alive = psutil.wait_procs([child], timeout=30)
        assert (len(gone), alive) == (1, [])
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.wait()
        if child is not None and child.is_running():
            child.kill()  # only if the test failed: it must have gone by itself
    assert disk.mounts_under(str(tmp_path)) == []
