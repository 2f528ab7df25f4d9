"""The manager's state under concurrency and failures, on a recording in-memory backend."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from thunderagent_sglang.sidecar.envs import Backend, EnvRecord, EnvSpec, ExecResult
from thunderagent_sglang.sidecar.errors import BadRequest
from thunderagent_sglang.sidecar.manager import EnvManager
from thunderagent_sglang.sidecar.policy import PENDING, RUNNING
from thunderagent_sglang.sidecar.settings import SidecarSettings


class RecordingBackend(Backend):
    """Workspaces are names in ``live``; every call that matters is appended to ``calls``."""

    name = "local"

    def __init__(self):
        self.live: set[str] = set()
        self.layers: set[str] = set()
        self.calls: list[tuple[str, ...]] = []
        self.exit_codes: dict[str, int] = {}  # command -> exit code (default 0)
        self.snapshot_gate: threading.Event | None = None
        self.snapshot_entered = threading.Event()
        self.on_resume = None  # called inside resume, with the record's lock held

    def probe(self): pass
    def pause(self, env): pass
    def resume(self, env):
        if self.on_resume:
            self.on_resume(env)
    def read_file(self, env, path): return b""
    def write_file(self, env, path, data):
        self.calls.append(("write_file", env.state))
    def disk_bytes(self, env): return 0
    def layer_bytes(self, name): return 0
    def sweep(self, keep_layers=frozenset(), keep_envs=frozenset()): return []

    def materialize(self, env: EnvRecord) -> None:
        self.live.add(env.env_id)

    def destroy(self, env: EnvRecord) -> None:
        self.live.discard(env.env_id)

    def exec(self, env, cmd, cwd, env_vars, timeout, max_output) -> ExecResult:
        self.calls.append(("exec", cmd))
        code = self.exit_codes.get(cmd, 0)
        return ExecResult(code, "", f"{cmd} failed" if code else "", False, 0.0)

    def snapshot(self, env, name) -> None:
        self.snapshot_entered.set()
        if self.snapshot_gate is not None:
            self.snapshot_gate.wait(10)
        self.layers.add(name)

    def remove_layer(self, name) -> None:
        self.calls.append(("remove_layer", name))
        self.layers.discard(name)


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()


@pytest.fixture
def manager(tmp_path, backend) -> EnvManager:
    return EnvManager(SidecarSettings(root=str(tmp_path)), {"local": backend})


def spec(program: str = "p", **extra) -> EnvSpec:
    return EnvSpec(program_id=program, backend="local", base_dir="/base", **extra)


def test_counters_are_exact_under_concurrent_creates_execs_and_destroys(manager, backend):
    def cycles(worker: int) -> None:
        for _ in range(250):
            env = manager.create(spec(f"p{worker}"))
            manager.exec(env.env_id, "true", ".", {}, 5)
            assert manager.destroy(env.env_id) is True

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: lost updates show up
    try:
        threads = [threading.Thread(target=cycles, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    c = manager.counters
    assert (c.created, c.execs, c.exec_timeouts, c.destroyed) == (2000, 2000, 0, {"request": 2000})
    assert manager.list() == [] and backend.live == set()


def test_terminate_during_a_snapshot_waits_for_it_then_frees_the_layer(manager, backend):
    env = manager.create(spec("P"))
    backend.snapshot_gate = threading.Event()
    snap = threading.Thread(target=manager.snapshot, args=(env.env_id,))
    snap.start()
    assert backend.snapshot_entered.wait(5)
    term = threading.Thread(target=manager.event, args=("P", "terminated"))
    term.start()
    time.sleep(0.1)  # the terminate now waits for the record's lock, held by the snapshot
    assert term.is_alive() and manager.list() == [env]
    backend.snapshot_gate.set()
    snap.join(5)
    term.join(5)
    # The layer was registered before the terminate ran, so the terminate removed it.
    [name] = [call[1] for call in backend.calls if call[0] == "remove_layer"]
    assert manager.layers == {} and backend.layers == set() and name.startswith("snap-")
    assert manager.layerbook.refs == {} and manager.list() == []


def test_failed_setup_returns_the_env_to_pending_and_reruns_on_next_use(manager, backend):
    backend.exit_codes["make deps"] = 3
    env = manager.create(spec("P", setup="make deps", lazy=True))
    assert manager.prepare("P") == []  # the failure is logged; nothing was prepared
    assert (env.state, backend.live) == (PENDING, set())  # the half-made workspace is gone
    with pytest.raises(BadRequest, match="the setup command exited 3: make deps failed"):
        manager.exec(env.env_id, "true", ".", {}, 5)
    assert (env.state, backend.live) == (PENDING, set())
    backend.exit_codes["make deps"] = 0
    assert manager.exec(env.env_id, "true", ".", {}, 5).exit_code == 0
    assert (env.state, backend.live) == (RUNNING, {env.env_id})
    assert backend.calls == [("exec", "make deps")] * 3 + [("exec", "true")]


def test_a_gc_pause_cannot_slip_between_resume_and_file_write(manager, backend):
    env = manager.create(spec())
    manager.pause(env.env_id)
    pauser = threading.Thread(target=manager.pause, args=(env.env_id,))

    def start_a_pause(_env):  # the GC decides to pause right as the write resumes it
        pauser.start()
        time.sleep(0.05)

    backend.on_resume = start_a_pause
    manager.write_file(env.env_id, "f", b"x")
    pauser.join(5)
    assert backend.calls == [("write_file", RUNNING)]  # written before the pause, not after
    assert env.state == "paused"
