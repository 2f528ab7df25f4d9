"""The ``docker`` backend: one container per environment through the Docker Engine API.

Works with dockerd or podman's docker-compatible socket (``DOCKER_HOST``). Containers are named
``ta-sidecar-ENV`` and labelled with the sidecar root, program and environment, so the orphan
sweep finds them after a crash. A snapshot is ``docker commit`` to ``ta-sidecar-snap:NAME``.
Timeouts kill the exec's process tree through its host pid (a local engine).

Defaults as the local backend's: never privileged, no host directory mounted (so never the
sidecar's token), every capability dropped and ``no-new-privileges``, commands as the sandbox
uid (owner of ``/workspace``), network ``none`` unless the environment has it. Root, where the
operator allows it, gets the local backend's small capability set.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import threading
import time

from thunderagent_sglang.sidecar.envs import Backend, EnvRecord, ExecResult
from thunderagent_sglang.sidecar.errors import BackendUnavailable, BadRequest, NotFound
from thunderagent_sglang.sidecar.jail import ROOT_CAPS
from thunderagent_sglang.sidecar.paths import relative_parts
from thunderagent_sglang.sidecar.settings import DEFAULT_SANDBOX_UID

NAME_PREFIX = "ta-sidecar-"
SNAP_REPO = "ta-sidecar-snap"
LABEL_ROOT, LABEL_PROGRAM, LABEL_ENV = ("thunderagent.sidecar", "thunderagent.program",
                                        "thunderagent.env")
WORKDIR = "/workspace"
_HOLD = ["/bin/sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, root: str, sandbox_uid: int = DEFAULT_SANDBOX_UID):
        self.root = root
        self.sandbox_uid = sandbox_uid
        self.client = None

    def probe(self) -> None:
        try:
            import docker
        except ImportError:
            raise BackendUnavailable("the docker backend needs the docker package: pip install "
                                     "'thunderagent-sglang[docker]'") from None
        try:
            self.client = docker.from_env(timeout=30)
            self.client.ping()
        except Exception as exc:
            raise BackendUnavailable(
                f"no container engine answers ({exc}): start dockerd, or podman system service "
                "and set DOCKER_HOST to its socket") from None

    def sweep(self, keep_layers: frozenset[str] = frozenset(),
              keep_envs: frozenset[str] = frozenset()) -> list[str]:
        removed = []
        for c in self.client.containers.list(all=True, filters={"label": f"{LABEL_ROOT}={self.root}"}):
            if c.name.startswith(NAME_PREFIX):
                c.remove(force=True)
                removed.append(f"container {c.name}")
        for image in self.client.images.list(filters={"label": f"{LABEL_ROOT}={self.root}"}):
            names = [t.split(":", 1)[1] for t in image.tags if t.startswith(SNAP_REPO + ":")]
            if names and not set(names) & keep_layers:
                self.client.images.remove(image.id, force=True)
                removed.append(f"image {image.tags[0]}")
        return removed

    def materialize(self, env: EnvRecord) -> None:
        spec = env.spec
        if spec.base_dir and not env.layers:
            raise BadRequest("the docker backend starts from an image, not base_dir: give image "
                             "(built locally, e.g. docker build or docker import)")
        image = f"{SNAP_REPO}:{env.layers[0]}" if env.layers else spec.image
        kwargs = dict(
            name=NAME_PREFIX + env.env_id, command=_HOLD, detach=True, working_dir=WORKDIR,
            labels={LABEL_ROOT: self.root, LABEL_PROGRAM: spec.program_id, LABEL_ENV: env.env_id},
            mem_limit=spec.memory, pids_limit=spec.pids,
            nano_cpus=int(spec.cpus * 1e9) if spec.cpus else None,
            privileged=False, security_opt=["no-new-privileges"], cap_drop=["ALL"],
            user="0:0" if spec.root else f"{self.sandbox_uid}:{self.sandbox_uid}",
        )
        if spec.root:
            kwargs["cap_add"] = [c.upper() for c in ROOT_CAPS]
        if not spec.network:
            kwargs["network_mode"] = "none"
        if env.ports and spec.network:
            kwargs["ports"] = {f"{p}/tcp": ("127.0.0.1", p) for p in env.ports.values()}
        if spec.disk:
            kwargs["storage_opt"] = {"size": str(spec.disk)}
        try:
            container = self.client.containers.create(image, **kwargs)
            env.handle = container.id
            if not env.layers:  # a snapshot has its workspace already
                container.put_archive("/", _workspace_tar(0 if spec.root else self.sandbox_uid))
            container.start()
        except Exception as exc:
            self.destroy(env)
            raise BadRequest(f"the engine refused the container ({_short(exc)}); without disk "
                             "quota support give no limits.disk") from None

    def destroy(self, env: EnvRecord) -> None:
        import docker.errors
        try:
            self.client.containers.get(NAME_PREFIX + env.env_id).remove(force=True)
        except docker.errors.NotFound:
            pass

    def pause(self, env: EnvRecord) -> None:
        self._container(env).pause()

    def resume(self, env: EnvRecord) -> None:
        self._container(env).unpause()

    def exec(self, env, cmd, cwd, env_vars, timeout, max_output) -> ExecResult:
        workdir = "/".join([WORKDIR, *relative_parts(cwd or ".")])
        api = self.client.api
        exec_id = api.exec_create(self._container(env).id, ["/bin/sh", "-c", cmd],
                                  environment=env_vars, workdir=workdir)["Id"]
        start, box = time.monotonic(), {}
        worker = threading.Thread(target=lambda: box.update(out=api.exec_start(exec_id, demux=True)))
        worker.start()
        worker.join(timeout)
        timed_out = worker.is_alive()
        if timed_out:
            _kill_tree(api.exec_inspect(exec_id).get("Pid", 0))
            worker.join(10)
        out, err = box.get("out") or (b"", b"")
        code = api.exec_inspect(exec_id).get("ExitCode")
        code = 137 if timed_out or code is None else code
        return ExecResult(code, _text(out or b"", max_output), _text(err or b"", max_output),
                          timed_out, time.monotonic() - start)

    def read_file(self, env, path) -> bytes:
        import docker.errors
        target = "/".join([WORKDIR, *relative_parts(path)])
        try:
            stream, _ = self._container(env).get_archive(target)
        except docker.errors.NotFound:
            raise NotFound(f"no file {path!r} in environment {env.env_id}") from None
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            if member is None or not member.isfile():
                raise BadRequest(f"{path!r} is not a regular file")
            return tar.extractfile(member).read()

    def write_file(self, env, path, data) -> None:
        parts = relative_parts(path)
        if not parts:
            raise BadRequest("give a file path inside the workspace, not its root")
        parent = "/".join([WORKDIR, *parts[:-1]])
        container = self._container(env)
        container.exec_run(["mkdir", "-p", parent])
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(parts[-1])
            info.size, info.mtime = len(data), int(time.time())
            info.uid = info.gid = 0 if env.spec.root else self.sandbox_uid  # the sandbox's file
            tar.addfile(info, io.BytesIO(data))
        if not container.put_archive(parent, buf.getvalue()):
            raise BadRequest(f"the engine refused to write {path!r}")

    def snapshot(self, env, name) -> None:
        self._container(env).commit(repository=SNAP_REPO, tag=name,
                                    conf={"Labels": {LABEL_ROOT: self.root}})

    def remove_layer(self, name) -> None:
        import docker.errors
        try:
            self.client.images.remove(f"{SNAP_REPO}:{name}", force=True)
        except docker.errors.NotFound:
            pass

    def disk_bytes(self, env) -> int:
        info = self.client.api.inspect_container(NAME_PREFIX + env.env_id, size=True)
        return int(info.get("SizeRw") or 0)

    def layer_bytes(self, name) -> int:
        return int(self.client.images.get(f"{SNAP_REPO}:{name}").attrs.get("Size") or 0)

    def _container(self, env: EnvRecord):
        return self.client.containers.get(NAME_PREFIX + env.env_id)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and its descendants (host pids: the engine runs on this machine)."""
    if not pid:
        return
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _workspace_tar(uid: int) -> bytes:
    """A tar of the ``workspace`` directory owned by ``uid`` (put before the container starts)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(WORKDIR.strip("/"))
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, uid
        info.mtime = int(time.time())
        tar.addfile(info)
    return buf.getvalue()


def _text(data: bytes, limit: int) -> str:
    text = data[:limit].decode("utf-8", errors="replace")
    return text + f"\n[... {len(data) - limit} more bytes cut]" if len(data) > limit else text


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:300]
