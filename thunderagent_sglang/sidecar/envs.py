"""What an environment is: its spec, its mutable record, an exec result, the backend contract."""

from __future__ import annotations

import abc
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from thunderagent_sglang.program.environments import MAX_COMMANDS, short_command
from thunderagent_sglang.sidecar.policy import PENDING, EnvView


@dataclass(frozen=True)
class EnvSpec:
    """A validated create request."""

    program_id: str
    backend: str
    base_dir: str | None = None  # local: a workspace directory (host root read-only around it)
    image: str | None = None  # local: a root filesystem directory; docker: an image name
    snapshot: str | None = None  # a layer made by POST /envs/{id}/snapshot
    disk: int | None = None  # bytes; None = no cap
    memory: int | None = None  # bytes (local: cgroup memory controller; docker: mem_limit)
    pids: int | None = None  # processes and threads at once
    cpus: float | None = None  # CPUs' worth of time per period, e.g. 0.5
    network: bool = False  # only where the operator allows it (--allow-network)
    root: bool = False  # uid 0 in the sandbox, only where the operator allows it (--allow-root)
    ports: tuple[str, ...] = ()
    setup: str | None = None  # a command run once when the environment is materialized
    lazy: bool = False  # materialize on "prepare" or first use, not now


@dataclass(eq=False)
class EnvRecord:
    env_id: str
    spec: EnvSpec
    created_at: float  # monotonic
    created_wall: float
    last_used_at: float
    state: str = PENDING
    ports: dict[str, int] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)  # snapshot layers under the base, top first
    lock: threading.RLock = field(default_factory=threading.RLock)
    busy: int = 0  # commands running
    procs: set = field(default_factory=set)  # Popen objects of running commands (local)
    commands: dict = field(default_factory=dict)  # running execs: token -> (cmd, wall, tool)
    handle: Any = None  # backend-private (docker: container id)
    disk_bytes: int = 0
    prepared_wall: float | None = None  # when a "prepare" event materialized or resumed it
    destroyed: bool = False
    destroying: bool = False  # set before a destroy waits for the lock: new commands are killed

    def view(self) -> EnvView:
        return EnvView(self.env_id, self.spec.program_id, self.state, self.created_at,
                       self.last_used_at, self.busy > 0)

    def report(self) -> dict:
        """This environment in the server's program record (``program.environments``)."""
        return {"env_id": self.env_id, "backend": self.spec.backend, "state": self.state,
                "disk_bytes": self.disk_bytes, "disk_cap": self.spec.disk,
                "commands": [{"cmd": short_command(cmd), "started_at": round(wall, 3),
                              "tool": tool}
                             for cmd, wall, tool in list(self.commands.values())[:MAX_COMMANDS]]}

    def to_json(self) -> dict:
        s = self.spec
        return {
            "env_id": self.env_id, "program_id": s.program_id, "backend": s.backend,
            "state": self.state, "base_dir": s.base_dir, "image": s.image,
            "snapshot": s.snapshot, "ports": dict(self.ports),
            "limits": {"disk": s.disk, "memory": s.memory, "pids": s.pids, "cpus": s.cpus,
                       "network": s.network},
            "root": s.root,
            "created_at": self.created_wall, "busy": self.busy > 0,
            "disk_bytes": self.disk_bytes, "prepared_at": self.prepared_wall,
        }


@dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool
    duration_s: float
    disk_full: bool = False

    def to_json(self) -> dict:
        return {"exit_code": self.exit_code, "stdout": self.stdout, "stderr": self.stderr,
                "timed_out": self.timed_out, "duration_s": round(self.duration_s, 4),
                "disk_full": self.disk_full}


class Backend(abc.ABC):
    """Mechanism only; the manager holds the record's lock around every call.

    Invariants: ``destroy`` is idempotent and leaves no mount, process, cgroup or directory of
    the environment; a command that starts once ``destroying`` or ``destroyed`` is set is killed
    at once; ``sweep`` removes everything a crashed sidecar with the same root left.
    """

    name = "?"
    persistent = False  # whether environments outlive the sidecar (restored after a restart)

    @abc.abstractmethod
    def probe(self) -> None:
        """Raises BackendUnavailable, saying what is missing and what to do, if it cannot run."""

    def check_limits(self, spec: EnvSpec) -> None:
        """Raises Unenforceable if ``spec`` asks for a limit this backend cannot enforce here."""

    @abc.abstractmethod
    def materialize(self, env: EnvRecord) -> None:
        """Creates the workspace (and container) of a PENDING environment; leaves it running."""

    @abc.abstractmethod
    def destroy(self, env: EnvRecord) -> None: ...

    def interrupt(self, env: EnvRecord) -> None:
        """Kills the environment's running commands. Called without the record's lock (which a
        long setup command holds), right before ``destroy``."""

    @abc.abstractmethod
    def pause(self, env: EnvRecord) -> None: ...

    @abc.abstractmethod
    def resume(self, env: EnvRecord) -> None: ...

    @abc.abstractmethod
    def exec(self, env: EnvRecord, cmd: str, cwd: str, env_vars: dict[str, str],
             timeout: float, max_output: int) -> ExecResult: ...

    @abc.abstractmethod
    def read_file(self, env: EnvRecord, path: str) -> bytes: ...

    @abc.abstractmethod
    def write_file(self, env: EnvRecord, path: str, data: bytes) -> None: ...

    @abc.abstractmethod
    def snapshot(self, env: EnvRecord, name: str) -> None:
        """Freezes the environment's changes as layer ``name`` (usable as ``snapshot``)."""

    @abc.abstractmethod
    def remove_layer(self, name: str) -> None: ...

    @abc.abstractmethod
    def disk_bytes(self, env: EnvRecord) -> int: ...

    @abc.abstractmethod
    def layer_bytes(self, name: str) -> int: ...

    def materialized(self, env: EnvRecord) -> bool:
        """Whether a restored environment has a workspace on disk (else it is made again)."""
        return False

    @abc.abstractmethod
    def sweep(self, keep_layers: frozenset[str] = frozenset(),
              keep_envs: frozenset[str] = frozenset()) -> list[str]:
        """Removes orphans of an earlier run (``keep_envs``: restored environments' files stay,
        their processes and mounts do not); returns what it removed, for the log."""


BackendFactory = Callable[[Any], Backend]
