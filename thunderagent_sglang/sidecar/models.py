"""Request bodies (pydantic) and their translation into a validated ``EnvSpec``."""

from __future__ import annotations

import os
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thunderagent_sglang.program.identity import id_problem, invalid_id_message
from thunderagent_sglang.program.tool_time import check_tool_name
from thunderagent_sglang.sidecar.envs import EnvSpec
from thunderagent_sglang.sidecar.errors import BadRequest, Forbidden, Unenforceable
from thunderagent_sglang.sidecar.settings import SidecarSettings
from thunderagent_sglang.sidecar.sizes import parse_size

MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_TIMEOUT_S = 120.0
MIN_MEMORY = 4 << 20  # below this not even the jail's shell starts
MAX_PATH = 4096  # Linux's PATH_MAX
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disk: int | str | None = None  # bytes or "512M"
    memory: int | str | None = None
    pids: int | None = Field(default=None, ge=1)
    cpus: float | None = Field(default=None, gt=0, le=4096)  # e.g. 0.5: half of one CPU
    network: bool = False  # on only where the operator started the sidecar with --allow-network


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    program_id: str = Field(min_length=1, max_length=256)
    base_dir: str | None = Field(default=None, max_length=MAX_PATH)
    image: str | None = Field(default=None, max_length=MAX_PATH)
    snapshot: str | None = Field(default=None, max_length=256)
    limits: Limits | None = None
    ports: list[str] = Field(default_factory=list, max_length=64)
    backend: str | None = None
    setup: str | None = None
    lazy: bool = False
    root: bool = False  # uid 0 in the sandbox: only where the operator gave --allow-root


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: str = Field(min_length=1)
    cwd: str = "."
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    expected_s: float | None = Field(default=None, ge=0)  # forwarded to the server's tool hint
    tool: str | None = None  # the tool's name, forwarded too (1-64 of [A-Za-z0-9._:-])

    @field_validator("tool")
    @classmethod
    def _tool(cls, tool: str | None) -> str | None:
        return check_tool_name(tool)

    @field_validator("env")
    @classmethod
    def _names(cls, env: dict[str, str]) -> dict[str, str]:
        # A name with '=' would set another variable; one starting with '-' is an option of env(1).
        bad = [name for name in env if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"variable names {bad} are not valid: use letters, digits and '_', "
                             "not starting with a digit")
        return env


class EventBody(BaseModel):
    program_id: str = Field(min_length=1, max_length=256)
    event: str


def to_spec(body: CreateBody, settings: SidecarSettings) -> EnvSpec:
    """The validated spec; refuses (403) what the operator did not allow, before anything is
    created."""
    problem = id_problem(body.program_id)
    if problem is not None:
        raise BadRequest(invalid_id_message("program_id", problem))
    if body.base_dir and body.image:
        raise BadRequest("give base_dir or image, not both")
    if not (body.base_dir or body.image or body.snapshot):
        raise BadRequest("give base_dir (a directory) or image, or a snapshot to start from")
    for name in body.ports:
        if not name.replace("_", "").isalnum():
            raise BadRequest(f"port name {name!r}: use letters, digits and '_'")
    limits = body.limits or Limits()
    backend = body.backend or settings.backend
    base_dir, image = operator_allows(network=limits.network, root=body.root, ports=body.ports,
                                      backend=backend, base_dir=body.base_dir, image=body.image,
                                      settings=settings)
    try:
        disk = parse_size(limits.disk) if limits.disk is not None else settings.default_disk_cap
        memory = parse_size(limits.memory) if limits.memory is not None else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if memory is not None and memory < MIN_MEMORY:
        raise BadRequest(f"limits.memory {limits.memory!r} is below {MIN_MEMORY >> 20}M: give "
                         "more, or no memory limit")
    return EnvSpec(
        program_id=body.program_id, backend=backend, base_dir=base_dir, image=image,
        snapshot=body.snapshot, disk=disk or None, memory=memory, pids=limits.pids,
        cpus=limits.cpus, network=limits.network, root=body.root, ports=tuple(body.ports),
        setup=body.setup, lazy=body.lazy,
    )


def check_restored(spec: EnvSpec, settings: SidecarSettings) -> None:
    """A recorded spec, checked again against this start's settings (as at create)."""
    operator_allows(network=spec.network, root=spec.root, ports=spec.ports,
                    backend=spec.backend, base_dir=spec.base_dir, image=spec.image,
                    settings=settings)


def operator_allows(*, network: bool, root: bool, ports, backend: str, base_dir: str | None,
                    image: str | None, settings: SidecarSettings) -> tuple[str | None, str | None]:
    """(base_dir, image) resolved, if the operator's settings allow this environment; 403 (422
    for ports without the network) otherwise."""
    if network and not settings.allow_network:
        raise Forbidden("limits.network is not allowed here: the operator must start the sidecar "
                        "with --allow-network (the launcher: --thunderagent-sidecar-allow-network)")
    if ports and not network:
        raise Unenforceable("ports need the network: ask for limits.network true (allowed by "
                            "--allow-network), or give no ports")
    if root and not settings.allow_root:
        raise Forbidden("root is not allowed here: commands run as the unprivileged sandbox "
                        "user unless the operator starts the sidecar with --allow-root")
    base_dir = allowed_dir(base_dir, settings.base_roots, "base_dir")
    if backend == "local" and image:
        image = allowed_dir(image, settings.base_roots, "image")
    return base_dir, image


def allowed_dir(path: str | None, roots: tuple[str, ...], what: str) -> str | None:
    """``path`` with symlinks and ``..`` resolved, if it lies under one of ``roots``; 403
    otherwise."""
    if path is None:
        return None
    if "\0" in path:
        raise BadRequest(f"{what} holds a NUL character: give a directory path")
    resolved = os.path.realpath(path)
    for root in roots:
        real_root = os.path.realpath(root)
        if resolved == real_root or resolved.startswith(real_root.rstrip("/") + "/"):
            return resolved
    raise Forbidden(f"{what} {path!r} is outside the allowed base roots ({', '.join(roots)}): "
                    "put it under one of them, or start the sidecar with --base-root DIR")
