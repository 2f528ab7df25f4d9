"""The environment manager: owns the records, applies the lifecycle policy through a backend.

Locks: ``self._lock`` guards the tables (records, programs, layers); each record's own lock
guards its state changes and is taken before the record is published, so a destroy can never
run between a create's insert and its mount. Commands run outside the record lock (``busy``
keeps the GC from pausing them; destroy kills them).
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager
from typing import Iterator
import secrets
import threading
import time
from dataclasses import dataclass, field

from thunderagent_sglang.program import events
from thunderagent_sglang.sidecar import policy
from thunderagent_sglang.sidecar.envs import Backend, EnvRecord, EnvSpec, ExecResult
from thunderagent_sglang.sidecar.errors import (BadRequest, Conflict, DiskFull, NotFound,
                                                unknown_env)
from thunderagent_sglang.sidecar.policy import PAUSED, PENDING, RUNNING
from thunderagent_sglang.sidecar.ports import PortTable
from thunderagent_sglang.sidecar.settings import SidecarSettings

log = logging.getLogger("thunderagent_sglang.sidecar")
SETUP_TIMEOUT_S = 3600.0


@dataclass(frozen=True)
class LayerInfo:
    name: str
    backend: str
    base_dir: str | None
    image: str | None
    chain: tuple[str, ...]  # this layer and the layers under it, top first


@dataclass
class Counters:
    created: int = 0
    destroyed: dict[str, int] = field(default_factory=dict)  # by reason
    paused_by_gc: int = 0
    execs: int = 0
    exec_timeouts: int = 0
    prepares: int = 0


class EnvManager:
    def __init__(self, settings: SidecarSettings, backends: dict[str, Backend],
                 clock=time.monotonic):
        self.settings, self.backends, self.clock = settings, backends, clock
        self.ports = PortTable(*settings.port_range)
        self.programs = policy.ProgramBook()
        self.layerbook = policy.LayerBook(keep=settings.keep_layers)
        self.layers: dict[str, LayerInfo] = {}
        self.counters = Counters()
        self.limits = policy.GcLimits(settings.ttl, settings.idle_ttl, settings.max_running)
        self._envs: dict[str, EnvRecord] = {}
        self._lock = threading.RLock()
        self.total_bytes = 0

    # -- create / inspect / destroy ----------------------------------------------------------
    def create(self, spec: EnvSpec) -> EnvRecord:
        backend = self._backend(spec.backend)
        backend.check_limits(spec)
        self._check_high_water()
        spec = self._inherit_base(spec)
        now = self.clock()
        env = EnvRecord(f"env-{secrets.token_hex(6)}", spec, now, time.time(), now)
        with env.lock:
            with self._lock:
                env.layers = self._chain(spec)
                if spec.image and spec.backend == "docker":
                    self.layerbook.add(spec.image, owned=False)
                for layer in env.layers + ([spec.image] if spec.image else []):
                    self.layerbook.ref(layer, env.env_id)
                self._envs[env.env_id] = env
            try:
                env.ports = self.ports.reserve(env.env_id, list(spec.ports))
                if not spec.lazy:
                    self._ensure_running(env, backend)
            except BaseException:
                if not env.destroying:  # else the destroy under way forgets it, by its reason
                    self._forget(env, "failed")
                raise
        self._count("created")
        return env

    def get(self, env_id: str) -> EnvRecord:
        with self._lock:
            env = self._envs.get(env_id)
        if env is None:
            raise unknown_env(env_id)
        return env

    def list(self) -> list[EnvRecord]:
        with self._lock:
            return list(self._envs.values())

    def destroy(self, env_id: str, reason: str = "request") -> bool:
        """Idempotent: False when there was nothing (left) to destroy."""
        with self._lock:
            env = self._envs.get(env_id)
        if env is None:
            return False
        env.destroying = True  # a command starting from now on is killed at once
        self._backend(env.spec.backend).interrupt(env)  # a setup command may hold the lock
        with env.lock:
            if env.destroyed:
                return False
            self._forget(env, reason)
        return True

    def _forget(self, env: EnvRecord, reason: str) -> None:
        env.destroyed = True
        try:
            self._backend(env.spec.backend).destroy(env)
        finally:
            self.ports.release(env.env_id)
            with self._lock:
                self._envs.pop(env.env_id, None)
                freed = self.layerbook.unref(env.env_id)
                self.counters.destroyed[reason] = self.counters.destroyed.get(reason, 0) + 1
            self._remove_layers(freed)

    # -- work --------------------------------------------------------------------------------
    def exec(self, env_id: str, cmd: str, cwd: str, env_vars: dict[str, str],
             timeout: float) -> ExecResult:
        env = self.get(env_id)
        backend = self._backend(env.spec.backend)
        with env.lock:
            self._ensure_running(env, backend)
            env.busy += 1
        try:
            ports = {f"PORT_{name.upper()}": str(port) for name, port in env.ports.items()}
            result = backend.exec(env, cmd, cwd, {**ports, **env_vars}, timeout,
                                  self.settings.max_output)
        finally:
            with env.lock:
                env.busy -= 1
                env.last_used_at = self.clock()
        self._count("execs")
        self._count("exec_timeouts", int(result.timed_out))
        return result

    def read_file(self, env_id: str, path: str) -> bytes:
        with self._running(env_id) as (env, backend):
            return backend.read_file(env, path)

    def write_file(self, env_id: str, path: str, data: bytes) -> None:
        with self._running(env_id) as (env, backend):
            backend.write_file(env, path, data)

    def snapshot(self, env_id: str) -> LayerInfo:
        name = f"snap-{secrets.token_hex(6)}"
        # Registered under the lock: a terminate cannot slip in and orphan the layer.
        with self._running(env_id) as (env, backend):
            if env.busy:
                raise Conflict(f"environment {env_id} is running a command: snapshot it after")
            backend.snapshot(env, name)
            info = LayerInfo(name, env.spec.backend, env.spec.base_dir, env.spec.image,
                             (name, *env.layers))
            with self._lock:
                self.layers[name] = info
                self.layerbook.add(name, owned=True)
                self.layerbook.ref(name, f"program:{env.spec.program_id}")
                for lower in env.layers:
                    self.layerbook.ref(lower, f"layer:{name}")
        return info

    def pause(self, env_id: str) -> EnvRecord:
        env = self.get(env_id)
        with env.lock:
            if env.busy:
                raise Conflict(f"environment {env_id} is running a command: pause it after")
            if env.state == RUNNING:
                self._backend(env.spec.backend).pause(env)
                env.state = PAUSED
        return env

    def resume(self, env_id: str) -> EnvRecord:
        with self._running(env_id) as (env, _):
            return env

    # -- program events ----------------------------------------------------------------------
    def event(self, program_id: str, event: str) -> list[str]:
        """Applies a server event; returns the environments it concerns."""
        if event not in events.EVENTS:
            raise BadRequest(f"unknown event {event!r}: use one of {', '.join(events.EVENTS)}")
        envs = [e.env_id for e in self.list() if e.spec.program_id == program_id]
        with self._lock:
            if event == events.PAUSED:
                self.programs.pause(program_id)
            elif event == events.RESUMED:
                self.programs.resume(program_id, self.clock())
        if event == events.TERMINATED:
            self._terminate(program_id, envs)
        return envs

    def prepare(self, program_id: str) -> list[str]:
        """Materializes or resumes the program's environments (before its request is admitted)."""
        done = []
        for env in [e for e in self.list() if e.spec.program_id == program_id]:
            try:
                with env.lock:
                    if env.destroyed or env.destroying:
                        continue
                    self._ensure_running(env, self._backend(env.spec.backend))
                    env.last_used_at = self.clock()
                    env.prepared_wall = time.time()
                done.append(env.env_id)
            except Exception as exc:  # a failed preparation leaves the env for first use
                log.warning("preparing %s of program %s failed: %s", env.env_id, program_id, exc)
        self._count("prepares", len(done))
        return done

    def _terminate(self, program_id: str, envs: list[str]) -> None:
        for env_id in envs:
            self.destroy(env_id, "terminated")
        with self._lock:
            self.programs.forget(program_id)
            freed = self.layerbook.unref(f"program:{program_id}")
        self._remove_layers(freed)

    # -- garbage collection ------------------------------------------------------------------
    def gc_tick(self) -> policy.GcDecision:
        now = self.clock()
        with self._lock:
            views = [e.view() for e in self._envs.values()]
            decision = policy.decide(views, self.programs, now, self.limits)
        for env_id, reason in decision.destroy:
            self.destroy(env_id, reason)
        for env_id in decision.pause:
            self._gc_pause(env_id)
        return decision

    def _gc_pause(self, env_id: str) -> None:
        try:
            env = self.get(env_id)
            with env.lock:
                if env.busy or env.state != RUNNING or env.destroyed:
                    return
                self._backend(env.spec.backend).pause(env)
                env.state = PAUSED
            self._count("paused_by_gc")
        except NotFound:
            pass

    def refresh_disk(self) -> int:
        total = 0
        for env in self.list():
            try:
                env.disk_bytes = self._backend(env.spec.backend).disk_bytes(env)
            except Exception as exc:
                log.debug("disk use of %s: %s", env.env_id, exc)
            total += env.disk_bytes
        total += sum(self.layer_bytes().values())
        self.total_bytes = total
        return total

    def layer_bytes(self) -> dict[str, int]:
        with self._lock:
            infos = list(self.layers.values())
        return {i.name: self._backend(i.backend).layer_bytes(i.name) for i in infos}

    def shutdown(self) -> None:
        for env in self.list():
            self.destroy(env.env_id, "shutdown")
        with self._lock:
            names = [n for n in self.layers if n not in self.layerbook.keep]
        self._remove_layers(names)

    # -- helpers -----------------------------------------------------------------------------
    @contextmanager
    def _running(self, env_id: str) -> Iterator[tuple[EnvRecord, Backend]]:
        """The environment, running, and its lock held: no pause or destroy until the block ends."""
        env = self.get(env_id)
        backend = self._backend(env.spec.backend)
        with env.lock:
            self._ensure_running(env, backend)
            env.last_used_at = self.clock()
            yield env, backend

    def _ensure_running(self, env: EnvRecord, backend: Backend) -> None:
        if env.destroyed or env.destroying:
            raise unknown_env(env.env_id)
        if env.state == PENDING:
            backend.materialize(env)
            env.state = RUNNING
            if env.spec.setup:
                self._set_up(env, backend)
        elif env.state == PAUSED:
            backend.resume(env)
            env.state = RUNNING

    def _set_up(self, env: EnvRecord, backend: Backend) -> None:
        """Runs the setup command; on failure the environment goes back to PENDING, so that
        its next use (or "prepare") sets it up again and its client sees the error."""
        try:
            result = backend.exec(env, env.spec.setup, ".", {}, SETUP_TIMEOUT_S, 64 << 10)
        except BaseException:
            backend.destroy(env)
            env.state = PENDING
            raise
        if result.exit_code == 0:
            return
        backend.destroy(env)
        env.state = PENDING
        if env.destroying:
            raise Conflict(f"environment {env.env_id} was destroyed during its setup command")
        raise BadRequest(f"the setup command exited {result.exit_code}"
                         f"{' (timed out)' if result.timed_out else ''}: {result.stderr[-2000:]}")

    def _chain(self, spec: EnvSpec) -> list[str]:
        if not spec.snapshot:
            return []
        info = self.layers.get(spec.snapshot)
        if info is None or info.backend != spec.backend:
            raise NotFound(f"unknown snapshot {spec.snapshot!r} for the {spec.backend} backend: "
                           "make one with POST /envs/{id}/snapshot")
        return list(info.chain)

    def _inherit_base(self, spec: EnvSpec) -> EnvSpec:
        if not spec.snapshot or spec.base_dir or spec.image:
            return spec
        with self._lock:
            info = self.layers.get(spec.snapshot)
        if info is None:
            return spec  # _chain says what is wrong
        return dataclasses.replace(spec, base_dir=info.base_dir, image=info.image)

    def _check_high_water(self) -> None:
        mark = self.settings.disk_high_water
        if mark is not None and self.total_bytes >= mark:
            raise DiskFull(f"the sidecar uses {self.total_bytes} bytes, above --disk-high-water "
                           f"{mark}: destroy environments or release finished programs")

    def _remove_layers(self, names: list[str]) -> None:
        for name in names:
            with self._lock:
                info = self.layers.pop(name, None)
                self.layerbook.drop(name)
                freed = self.layerbook.unref(f"layer:{name}")
            if info is not None:
                self._backend(info.backend).remove_layer(name)
            self._remove_layers(freed)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.counters, name, getattr(self.counters, name) + n)

    def _backend(self, name: str) -> Backend:
        backend = self.backends.get(name)
        if backend is None:
            raise BadRequest(f"backend {name!r} is not enabled here: use one of "
                             f"{', '.join(sorted(self.backends))}")
        return backend
