"""The sidecar's settings: one frozen dataclass, built from the command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from thunderagent_sglang.sidecar.ports import DEFAULT_PORT_RANGE
from thunderagent_sglang.sidecar.sizes import parse_size

TOKEN_ENV = "THUNDERAGENT_SIDECAR_TOKEN"
SERVER_KEY_ENV = "THUNDERAGENT_SERVER_API_KEY"
DEFAULT_PORT = 8765
DEFAULT_SANDBOX_UID = 61000


def default_root() -> str:
    if os.geteuid() == 0:
        return "/var/lib/thunderagent-sidecar"
    return str(Path.home() / ".cache" / "thunderagent_sglang" / "sidecar")


@dataclasses.dataclass(frozen=True)
class SidecarSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 = any free port; the URL is printed and written to ROOT/url
    root: str = dataclasses.field(default_factory=default_root)
    backend: str = "local"
    server_url: str | None = None
    ttl: float | None = None
    idle_ttl: float | None = None
    max_running: int | None = None
    disk_high_water: int | None = None
    default_disk_cap: int | None = None
    keep_layers: frozenset[str] = frozenset()
    port_range: tuple[int, int] = DEFAULT_PORT_RANGE
    gc_interval: float = 1.0
    max_output: int = 1 << 20
    base_roots: tuple[str, ...] = ()  # empty: ROOT/bases only (see ``allowed_base_roots``)
    allow_network: bool = False
    allow_root: bool = False
    sandbox_uid: int = DEFAULT_SANDBOX_UID
    sweep_dir: str | None = None  # sweep what dead sidecars left in sibling roots under it

    def __post_init__(self):
        if not self.base_roots:
            object.__setattr__(self, "base_roots", (os.path.join(self.root, "bases"),))

    @property
    def token_file(self) -> str:
        return os.path.join(self.root, "token")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m thunderagent_sglang.sidecar",
        description="Tool-environment sidecar: sandboxes owned by programs, destroyed when the "
        "ThunderAgent server ends the program. HTTP API behind a bearer token ("
        f"{TOKEN_ENV}, or generated into ROOT/token, mode 0600, and printed).",
    )
    p.add_argument("--host", default="127.0.0.1", help="Listen address (default: loopback only).")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"Listen port; 0 picks a free one (default: {DEFAULT_PORT}).")
    p.add_argument("--root", default=default_root(),
                   help="State directory: workspaces, layers, token (default: %(default)s). "
                   "Everything in it from an earlier run is swept at start.")
    p.add_argument("--backend", choices=("local", "docker"), default="local",
                   help="Default backend for POST /envs (default: local, overlayfs + namespaces).")
    p.add_argument("--server-url", default=None,
                   help="ThunderAgent server to report each exec to as a tool phase "
                   f"(POST /programs/ID/tool); its API key from {SERVER_KEY_ENV}.")
    p.add_argument("--ttl", type=_seconds, default=None, help="Destroy environments older than this.")
    p.add_argument("--idle-ttl", type=_seconds, default=None,
                   help="Destroy environments unused this long (paused programs' excluded).")
    p.add_argument("--max-running", type=int, default=None,
                   help="Pause the least recently used environments above this many running.")
    p.add_argument("--disk-high-water", type=parse_size, default=None,
                   help="Refuse creates while the sidecar's disk use is above this (e.g. 50G).")
    p.add_argument("--default-disk-cap", type=parse_size, default=None,
                   help="Disk cap of environments that give none in limits.disk (e.g. 2G).")
    p.add_argument("--keep-layers", default="",
                   help="Comma-separated snapshot/image names never removed when unused.")
    p.add_argument("--port-range", default=f"{DEFAULT_PORT_RANGE[0]}-{DEFAULT_PORT_RANGE[1]}",
                   help="Host ports handed to environments (default: %(default)s).")
    p.add_argument("--gc-interval", type=_seconds, default=1.0,
                   help="Seconds between lifecycle checks (default: 1).")
    p.add_argument("--base-root", action="append", default=[], metavar="DIR",
                   help="Where base_dir (and a local image directory) may come from; repeatable. "
                   "Any other base is refused with 403 (default: ROOT/bases only).")
    p.add_argument("--allow-network", action="store_true",
                   help="Let a create request ask for the network (limits.network true: the "
                   "host's network, the sidecar's own API still refused). Off: each command has "
                   "only its own loopback.")
    p.add_argument("--allow-root", action="store_true",
                   help="Let a create request ask for root (\"root\": true: uid 0 in the sandbox "
                   "with a small capability set). Off: commands run as the sandbox uid.")
    p.add_argument("--sandbox-uid", type=int, default=DEFAULT_SANDBOX_UID,
                   help="The unprivileged uid and gid commands run as; it owns the workspace's "
                   "files as root owns them on disk (default: %(default)s).")
    p.add_argument("--sweep-dir", default=None, metavar="DIR",
                   help="At start, also sweep every sidecar root under DIR that no live sidecar "
                   "holds (processes, mounts, loop devices, cgroups, directories).")
    return p


def from_args(argv: list[str] | None = None) -> SidecarSettings:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        low, high = (int(x) for x in a.port_range.split("-"))
    except ValueError:
        parser.error(f"--port-range {a.port_range!r}: use LOW-HIGH, e.g. 20000-29999")
    if a.max_running is not None and a.max_running < 1:
        parser.error("--max-running must be at least 1")
    for problem in base_root_problems(os.path.abspath(a.root), a.base_root):
        parser.error(problem)
    if not 0 < a.sandbox_uid < 2**31 - 1:
        parser.error("--sandbox-uid must be a positive uid other than root's")
    return SidecarSettings(
        host=a.host, port=a.port, root=os.path.abspath(a.root), backend=a.backend,
        server_url=a.server_url, ttl=a.ttl, idle_ttl=a.idle_ttl, max_running=a.max_running,
        disk_high_water=a.disk_high_water, default_disk_cap=a.default_disk_cap,
        keep_layers=frozenset(x for x in a.keep_layers.split(",") if x),
        port_range=(low, high), gc_interval=a.gc_interval,
        base_roots=tuple(os.path.abspath(d) for d in a.base_root),
        allow_network=a.allow_network, allow_root=a.allow_root, sandbox_uid=a.sandbox_uid,
        sweep_dir=os.path.abspath(a.sweep_dir) if a.sweep_dir else None,
    )


def base_root_problems(root: str, base_roots: list[str]) -> list[str]:
    """A base root must not show the sidecar's own state (token, other environments)."""
    real_root = os.path.realpath(root)
    problems = []
    for given in base_roots:
        base = os.path.realpath(given)
        inside_root = base.startswith(real_root + "/")
        if real_root == base or real_root.startswith(base.rstrip("/") + "/") or (
                inside_root and not base.startswith(os.path.join(real_root, "bases"))):
            problems.append(f"--base-root {given} would show the sidecar's own state (token, "
                            f"environments) under --root {root}: give a directory outside it, or "
                            "ROOT/bases")
    return problems


def _seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a positive number of seconds")
    return value
