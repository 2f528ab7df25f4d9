"""The local backend called directly: races and error paths the HTTP API cannot time."""

from __future__ import annotations

import os
import time

import pytest

from thunderagent_sglang.sidecar import disk
from thunderagent_sglang.sidecar.envs import EnvRecord, EnvSpec
from thunderagent_sglang.sidecar.errors import SidecarError
from thunderagent_sglang.sidecar.local_backend import LocalBackend
from tests.sidecar.conftest import needs_local


def _record(base, env_id: str = "env-test") -> EnvRecord:
    return EnvRecord(env_id, EnvSpec("p", "local", base_dir=str(base)), 0.0, 0.0, 0.0)


@needs_local
def test_a_command_starting_after_a_destroy_began_is_killed_at_once(tmp_path, base):
    backend = LocalBackend(str(tmp_path / "root"))
    backend.probe()
    env = _record(base)
    backend.materialize(env)
    try:
        env.destroying = True  # a destroy has begun and waits for the record's lock
        start = time.monotonic()
        result = backend.exec(env, "sleep 30", ".", {}, 20, 1 << 20)
        assert (result.exit_code, result.timed_out) == (137, False)
        assert time.monotonic() - start < 5 and env.procs == set()
    finally:
        backend.destroy(env)
    assert disk.mounts_under(str(tmp_path / "root")) == []


def test_a_failed_snapshot_leaves_no_layer_directory(tmp_path, base):
    backend = LocalBackend(str(tmp_path / "root"))
    os.makedirs(backend.layers_dir)
    env = _record(base, "env-never-materialized")  # no upper dir: the copy fails
    with pytest.raises(SidecarError, match="copying the environment's changes"):
        backend.snapshot(env, "snap-x")
    assert os.listdir(backend.layers_dir) == []
