"""Pure: what a fleet is (its name, replicas, each replica's resources and server flags), the
names of its Ray actors, and the command lines its actors run. No Ray import."""

from __future__ import annotations

import re
from dataclasses import dataclass

from thunderagent_sglang.launch_args import TP_FLAGS

NAMESPACE = "thunderagent"
FLEET_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
# flags the cluster sets itself, per replica
OWNED_FLAGS = {"--port": "--replica-port", "--host": "--host"}
DP_FLAGS = ("--dp-size", "--dp", "--data-parallel-size")


class SpecError(ValueError):
    """A fleet that cannot be started as asked (the message says what to pass)."""


@dataclass(frozen=True)
class FleetSpec:
    replicas: int
    server_args: tuple[str, ...] = ()
    name: str = "default"
    cpus_per_replica: float = 1.0
    gpus_per_replica: int | None = None  # None: the server's --tp-size on a cluster with GPUs
    max_restarts: int = 3
    replica_port: int = 30000  # replica i tries this + i first
    router_port: int = 30010
    host: str | None = None  # what servers bind; None: each node's Ray address
    start_timeout_s: float = 900.0
    log_dir: str = "/tmp/thunderagent-cluster"
    strategy: str = "SPREAD"
    router_args: tuple[str, ...] = ()

    def __post_init__(self):
        if not FLEET_NAME.match(self.name):
            raise SpecError(f"--name {self.name!r}: 1-32 characters of [a-z0-9-], starting "
                            "with a letter or digit")
        if not 1 <= self.replicas <= 256:
            raise SpecError("--replicas must be 1..256")
        if not self.cpus_per_replica > 0:
            raise SpecError("--cpus-per-replica must be positive")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 0:
            raise SpecError("--gpus-per-replica must be 0 or more")
        if self.max_restarts < 0:
            raise SpecError("--max-restarts must be 0 or more")
        for flag, port in (("--replica-port", self.replica_port + self.replicas - 1),
                           ("--router-port", self.router_port)):
            if not 1024 <= port < 65536:
                raise SpecError(f"{flag}: ports 1024..65535 (replica i uses the base + i)")
        if self.strategy not in ("SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"):
            raise SpecError(f"--placement-strategy {self.strategy!r}: SPREAD, PACK, "
                            "STRICT_SPREAD or STRICT_PACK")
        if self.start_timeout_s <= 0:
            raise SpecError("--start-timeout must be positive")
        check_server_args(self.server_args)

    @property
    def api_key(self) -> str | None:
        """The servers' ``--api-key`` (the router asks clients for it too)."""
        return flag_value(self.server_args, ("--api-key",))

    def bearer(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None


def flag_value(args: tuple[str, ...] | list[str], names: tuple[str, ...]) -> str | None:
    """The value of the last of ``names`` in ``args`` (``--flag V`` or ``--flag=V``)."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1:]
    return value


def check_server_args(args: tuple[str, ...]) -> None:
    for flag, ours in OWNED_FLAGS.items():
        if flag_value(args, (flag,)) is not None:
            raise SpecError(f"the cluster picks each replica's {flag[2:]}: leave {flag} out of "
                            f"the server flags (use the cluster's {ours})")
    dp = flag_value(args, DP_FLAGS)
    if dp is not None and dp != "1":
        raise SpecError("data parallelism inside a replica is refused: use --replicas N "
                        "(one server per replica, behind the router)")
    tp = flag_value(args, TP_FLAGS)
    if tp is not None and not (tp.isdigit() and int(tp) >= 1):
        raise SpecError(f"--tp-size {tp!r} must be a positive integer")


def tp_size(args: tuple[str, ...]) -> int:
    return int(flag_value(args, TP_FLAGS) or 1)


def bundle(spec: FleetSpec, cluster_gpus: float) -> dict[str, float]:
    """One replica's placement-group bundle: its CPUs, and GPUs (one per tensor-parallel rank
    by default, none on a CPU cluster)."""
    gpus = spec.gpus_per_replica
    if gpus is None:
        gpus = tp_size(spec.server_args) if cluster_gpus > 0 else 0
    out = {"CPU": float(spec.cpus_per_replica)}
    if gpus:
        out["GPU"] = float(gpus)
    return out


def replica_name(fleet: str, index: int) -> str:
    return f"{fleet}-replica-{index}"


def router_name(fleet: str) -> str:
    return f"{fleet}-router"


def group_name(fleet: str) -> str:
    return f"{fleet}-replicas"


def url_for(host: str, port: int) -> str:
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


def server_command(python: str, spec: FleetSpec, host: str, port: int) -> list[str]:
    return [python, "-m", "thunderagent_sglang.launch_server", *spec.server_args,
            "--host", host, "--port", str(port)]


def router_command(python: str, spec: FleetSpec, backends: dict[str, str], host: str,
                   port: int) -> list[str]:
    """The router's command line; its keys travel in the environment, not here."""
    listed = ",".join(f"{name}={url}" for name, url in sorted(backends.items()))
    return [python, "-m", "thunderagent_sglang.router", "--backends", listed,
            "--host", host, "--port", str(port), *spec.router_args]


def router_env(spec: FleetSpec, admin_key: str) -> dict[str, str]:
    """The router's keys, in its environment (never on a command line): its admin key
    (replicas register with it) and the servers' keys when they have them; clients then use
    the servers' API key with the router too."""
    env = {"THUNDERAGENT_ROUTER_ADMIN_KEY": admin_key}
    if spec.api_key:
        env["THUNDERAGENT_ROUTER_API_KEY"] = spec.api_key
    backend_admin = flag_value(spec.server_args, ("--admin-api-key",))
    if backend_admin:
        env["THUNDERAGENT_ROUTER_BACKEND_ADMIN_KEY"] = backend_admin
    return env
