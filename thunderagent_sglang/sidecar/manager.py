"""The environment manager: owns the records, applies the lifecycle policy through a backend.

Locks: ``self._lock`` guards the tables (records, programs, layers); each record's own lock
guards its state changes and is taken before the record is published, so a destroy can never
run between a create's insert and its mount. Commands run outside the record lock (``busy``
keeps the GC from pausing them; destroy kills them).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from contextlib import contextmanager
from typing import Iterator
import secrets
import threading
import time
from dataclasses import dataclass, field

from thunderagent_sglang.program import events
from thunderagent_sglang.program.environments import MAX_ENVIRONMENTS
from thunderagent_sglang.sidecar import models, policy
from thunderagent_sglang.sidecar.envs import Backend, EnvRecord, EnvSpec, ExecResult
from thunderagent_sglang.sidecar.errors import (BadRequest, Conflict, DiskFull, NotFound,
                                                SidecarError, unknown_env)
from thunderagent_sglang.sidecar.policy import PAUSED, PENDING, RUNNING
from thunderagent_sglang.sidecar.ports import PortTable
from thunderagent_sglang.sidecar.records import Records, SavedEnv, SavedLayer
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
    program_id: str = ""


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
                 clock=time.monotonic, records: Records | None = None):
        self.settings, self.backends, self.clock = settings, backends, clock
        self.records = records  # None: nothing survives a restart
        self.unreconciled: set[str] = set()  # restored environments the server has not confirmed
        self.unreconciled_programs: set[str] = set()  # their programs, and snapshot owners
        self.ports = PortTable(*settings.port_range)
        self.programs = policy.ProgramBook()
        self.layerbook = policy.LayerBook(keep=settings.keep_layers)
        self.layers: dict[str, LayerInfo] = {}
        self.counters = Counters()
        self.limits = policy.GcLimits(settings.ttl, settings.idle_ttl, settings.max_running)
        self._envs: dict[str, EnvRecord] = {}
        self._lock = threading.RLock()
        self._tokens = itertools.count()
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
                self._save(env)
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

    def program_of(self, env_id: str) -> str | None:
        with self._lock:
            env = self._envs.get(env_id)
        return None if env is None else env.spec.program_id

    def programs_with_environments(self) -> set[str]:
        with self._lock:
            return {e.spec.program_id for e in self._envs.values()}

    def environments_report(self, program_id: str) -> list[dict]:
        """The program's environments as the server's record shows them (at most
        MAX_ENVIRONMENTS, oldest first)."""
        envs = [e for e in self.list() if e.spec.program_id == program_id and not e.destroyed]
        return [e.report() for e in envs[:MAX_ENVIRONMENTS]]

    def with_network(self) -> tuple[bool, bool]:
        """(whether any environment has the network, whether one runs as root with it). Without
        the network a sandbox cannot reach the host's sockets at all."""
        with self._lock:
            specs = [e.spec for e in self._envs.values() if e.spec.network]
        return bool(specs), any(spec.root for spec in specs)

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
            if self.records is not None:
                self.records.drop_env(env.env_id)
            with self._lock:
                self._envs.pop(env.env_id, None)
                self.unreconciled.discard(env.env_id)
                freed = self.layerbook.unref(env.env_id)
                self.counters.destroyed[reason] = self.counters.destroyed.get(reason, 0) + 1
            self._remove_layers(freed)

    # -- work --------------------------------------------------------------------------------
    def exec(self, env_id: str, cmd: str, cwd: str, env_vars: dict[str, str],
             timeout: float, tool: str | None = None, started=None) -> ExecResult:
        """Runs ``cmd``; while it runs, the program's environment report lists it (``started``,
        if given, is called once it is listed)."""
        env = self.get(env_id)
        backend = self._backend(env.spec.backend)
        token = next(self._tokens)
        with env.lock:
            self._ensure_running(env, backend)
            env.busy += 1
            env.commands[token] = (cmd, time.time(), tool)
        if started is not None:
            started()
        try:
            ports = {f"PORT_{name.upper()}": str(port) for name, port in env.ports.items()}
            result = backend.exec(env, cmd, cwd, {**ports, **env_vars}, timeout,
                                  self.settings.max_output)
        finally:
            with env.lock:
                env.busy -= 1
                env.commands.pop(token, None)
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
                             (name, *env.layers), env.spec.program_id)
            if self.records is not None and backend.persistent:
                self.records.save_layer(SavedLayer(**dataclasses.asdict(info)))
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

    def _terminate(self, program_id: str, envs: list[str], reason: str = "terminated") -> None:
        for env_id in envs:
            self.destroy(env_id, reason)
        with self._lock:
            self.programs.forget(program_id)
            freed = self.layerbook.unref(f"program:{program_id}")
        self._remove_layers(freed)

    # -- restart -----------------------------------------------------------------------------
    def restore(self) -> tuple[frozenset[str], frozenset[str]]:
        """Takes back the environments and snapshots an earlier sidecar on this root recorded
        (paused: their processes and mounts died with it), where this sidecar's settings still
        allow them. Returns (environment ids, layer names) the start-up sweep must keep."""
        if self.records is None:
            return frozenset(), frozenset()
        layers = {s.name: s for s in self.records.layers() if self._usable_backend(s.backend)}
        for saved in self.records.envs():
            problem = self._restore_problem(saved, layers)
            if problem:
                log.warning("environment %s of program %s is not restored: %s", saved.env_id,
                            saved.spec.program_id, problem)
                continue
            self._restore_env(saved)
        used = {name for env in self._envs.values() for name in env.layers}
        used |= {name for name, s in layers.items() if s.program_id}  # the program's own
        for name in sorted(used & set(layers)):
            self._restore_layer(layers[name])
        self.records.keep_only(set(self._envs), set(self.layers))
        if self._envs:
            log.warning("restored %d environments of an earlier run (paused until used)",
                        len(self._envs))
        return frozenset(self._envs), frozenset(self.layers)

    def _usable_backend(self, name: str) -> bool:
        backend = self.backends.get(name)
        return backend is not None and backend.persistent

    def _restore_problem(self, saved: SavedEnv, layers: dict[str, SavedLayer]) -> str | None:
        if not self._usable_backend(saved.spec.backend):
            return f"the {saved.spec.backend} backend keeps nothing across restarts"
        missing = [name for name in saved.layers if name not in layers]
        if missing:
            return f"its snapshot layers {missing} are gone"
        try:
            models.check_restored(saved.spec, self.settings)
        except SidecarError as exc:
            return str(exc)
        return None

    def _restore_env(self, saved: SavedEnv) -> None:
        now, wall = self.clock(), time.time()
        env = EnvRecord(saved.env_id, saved.spec, now - max(0.0, wall - saved.created_wall),
                        saved.created_wall, now, layers=list(saved.layers))
        backend = self._backend(saved.spec.backend)
        env.state = PAUSED if backend.materialized(env) else PENDING
        env.ports = self.ports.restore(env.env_id, saved.ports)
        for layer in env.layers + ([saved.spec.image] if saved.spec.image else []):
            self.layerbook.ref(layer, env.env_id)
        self._envs[env.env_id] = env
        self.unreconciled.add(env.env_id)
        self.unreconciled_programs.add(env.spec.program_id)

    def _restore_layer(self, saved: SavedLayer) -> None:
        info = LayerInfo(saved.name, saved.backend, saved.base_dir, saved.image, saved.chain,
                         saved.program_id)
        self.layers[saved.name] = info
        self.layerbook.add(saved.name, owned=True)
        self.layerbook.ref(saved.name, f"program:{saved.program_id}")
        for lower in saved.chain[1:]:
            self.layerbook.ref(lower, f"layer:{saved.name}")
        self.unreconciled_programs.add(saved.program_id)

    def reconcile(self, programs: list[dict]) -> list[str]:
        """The server's ``GET /programs`` records: destroys the restored environments of
        programs it does not list as live; marks its paused programs paused here."""
        live = {p.get("program_id") for p in programs if p.get("status") != "terminated"}
        with self._lock:
            for record in programs:
                if record.get("status") == "paused":
                    self.programs.pause(record.get("program_id"))
            doomed = [e for e in self._envs.values()
                      if e.env_id in self.unreconciled and e.spec.program_id not in live]
            ended = sorted(self.unreconciled_programs - live)
            self.unreconciled.clear()
            self.unreconciled_programs.clear()
        for program_id in ended:  # their restored environments and snapshots
            self._terminate(program_id, [e.env_id for e in doomed
                                         if e.spec.program_id == program_id], "reconciled")
        if doomed:
            log.warning("destroyed %d restored environments of programs the server no longer "
                        "runs", len(doomed))
        return [e.env_id for e in doomed]

    def _save(self, env: EnvRecord) -> None:
        if self.records is not None and self._backend(env.spec.backend).persistent:
            self.records.save_env(SavedEnv(env.env_id, env.spec, env.created_wall,
                                           dict(env.ports), list(env.layers)))

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
                if self.records is not None:
                    self.records.drop_layer(name)
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
