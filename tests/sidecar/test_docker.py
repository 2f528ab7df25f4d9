"""The docker backend against a real engine; skipped, with the reason, when none can run.

Set-up: the engine is started with the flags of docs sandboxes.md if ``dockerd`` is installed
and none answers; the tiny image is built locally (a static busybox, no registry).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time

import pytest

from thunderagent_sglang.sidecar.docker_backend import DockerBackend, NAME_PREFIX
from thunderagent_sglang.sidecar.envs import EnvRecord, EnvSpec
from thunderagent_sglang.sidecar.errors import BackendUnavailable

DOCKERD_FLAGS = ["--default-ulimit", "nofile=20000:20000", "--default-ulimit",
                 "nproc=32768:32768", "--bridge", "none", "--iptables=false"]
IMAGE = "thunderagent-sidecar-test:busybox"


def _engine(root: str) -> tuple[DockerBackend | None, str]:
    backend = DockerBackend(root)
    try:
        backend.probe()
        return backend, ""
    except BackendUnavailable as first:
        reason = str(first)
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        return None, f"{reason}; dockerd is not installed (apt-get install docker.io)"
    subprocess.Popen(["dockerd", *DOCKERD_FLAGS], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(60):
        time.sleep(0.5)
        try:
            backend.probe()
            return backend, ""
        except BackendUnavailable as exc:
            reason = str(exc)
    return None, f"dockerd did not start: {reason}"


def _busybox_image(client) -> str | None:
    busybox = shutil.which("busybox")
    if busybox is None:
        return None
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for tool in ("sh", "sleep", "cat", "echo", "mkdir", "ls", "kill", "true", "id", "stat"):
            link = tarfile.TarInfo(f"bin/{tool}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    dockerfile = b"FROM scratch\nADD rootfs.tar /\n"
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile), ("rootfs.tar", buf.getvalue())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=IMAGE, rm=True)
    return IMAGE


@pytest.fixture(scope="module")
def docker_backend(tmp_path_factory):
    backend, reason = _engine(str(tmp_path_factory.mktemp("docker-root")))
    if backend is None:
        pytest.skip(f"no container engine: {reason}")
    image = _busybox_image(backend.client)
    if image is None:
        pytest.skip("no static busybox to build the test image from (apt-get install busybox-static)")
    yield backend
    backend.sweep()


def _env(env_id: str, **spec) -> EnvRecord:
    return EnvRecord(env_id, EnvSpec(program_id="p", backend="docker", image=IMAGE, **spec),
                     0.0, 0.0, 0.0)


def test_docker_exec_files_timeout_snapshot_and_labels(docker_backend):
    env = _env("env-dock1")
    docker_backend.materialize(env)
    try:
        labels = docker_backend.client.containers.get(NAME_PREFIX + "env-dock1").labels
        assert labels["thunderagent.program"] == "p"
        docker_backend.write_file(env, "d/f.txt", b"hi")
        assert docker_backend.read_file(env, "d/f.txt") == b"hi"
        out = docker_backend.exec(env, "cat d/f.txt; pwd", ".", {"A": "1"}, 10, 1 << 16)
        assert (out.exit_code, out.stdout) == (0, "hi/workspace\n")
        slow = docker_backend.exec(env, "sleep 1005 & sleep 1006", ".", {}, 1, 1 << 16)
        assert slow.timed_out and slow.exit_code == 137
        docker_backend.snapshot(env, "snap-dock")
        clone = EnvRecord("env-dock2", env.spec, 0.0, 0.0, 0.0, layers=["snap-dock"])
        docker_backend.materialize(clone)
        assert docker_backend.read_file(clone, "d/f.txt") == b"hi"
        docker_backend.pause(clone)
        docker_backend.resume(clone)
        docker_backend.destroy(clone)
        docker_backend.destroy(clone)  # idempotent
    finally:
        docker_backend.destroy(env)
    docker_backend.remove_layer("snap-dock")


def test_docker_sweep_removes_labelled_orphans(docker_backend):
    docker_backend.materialize(_env("env-orphan"))
    removed = docker_backend.sweep()
    assert f"container {NAME_PREFIX}env-orphan" in removed


def test_docker_containers_get_the_sandbox_defaults(docker_backend):
    env = _env("env-hard1")
    docker_backend.materialize(env)
    try:
        host = docker_backend.client.api.inspect_container(NAME_PREFIX + "env-hard1")
        config = host["HostConfig"]
        assert (config["Privileged"], config["CapDrop"], config["NetworkMode"]) == (
            False, ["ALL"], "none")
        assert "no-new-privileges" in config["SecurityOpt"] and not config.get("Binds")
        assert host["Mounts"] == [] and host["Config"]["User"] == "61000:61000"
        docker_backend.write_file(env, "f.txt", b"hi")
        out = docker_backend.exec(env, "id -u; stat -c %u . f.txt; echo x >> f.txt; "
                                  "cat /proc/self/status", ".", {}, 10, 1 << 16)
        lines = out.stdout.splitlines()
        assert lines[:3] == ["61000", "61000", "61000"] and out.exit_code == 0, out
        assert "CapEff:\t0000000000000000" in lines and "NoNewPrivs:\t1" in lines
    finally:
        docker_backend.destroy(env)
