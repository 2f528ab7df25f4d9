"""Request bodies (pydantic) and their translation into a validated ``EnvSpec``."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from thunderagent_sglang.program.identity import id_problem, invalid_id_message
from thunderagent_sglang.sidecar.envs import EnvSpec
from thunderagent_sglang.sidecar.errors import BadRequest
from thunderagent_sglang.sidecar.sizes import parse_size

MAX_TIMEOUT_S = 24 * 3600.0
DEFAULT_TIMEOUT_S = 120.0
MIN_MEMORY = 4 << 20  # below this not even the jail's shell starts
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    disk: int | str | None = None  # bytes or "512M"
    memory: int | str | None = None
    pids: int | None = Field(default=None, ge=1)
    cpus: float | None = Field(default=None, gt=0, le=4096)  # e.g. 0.5: half of one CPU
    network: bool = True


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    program_id: str = Field(min_length=1, max_length=256)
    base_dir: str | None = None
    image: str | None = None
    snapshot: str | None = None
    limits: Limits | None = None
    ports: list[str] = Field(default_factory=list, max_length=64)
    backend: str | None = None
    setup: str | None = None
    lazy: bool = False


class ExecBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cmd: str = Field(min_length=1)
    cwd: str = "."
    env: dict[str, str] = Field(default_factory=dict)
    timeout: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=MAX_TIMEOUT_S)
    expected_s: float | None = Field(default=None, ge=0)  # forwarded to the server's tool hint

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


def to_spec(body: CreateBody, default_backend: str, default_disk: int | None) -> EnvSpec:
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
    try:
        disk = parse_size(limits.disk) if limits.disk is not None else default_disk
        memory = parse_size(limits.memory) if limits.memory is not None else None
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if memory is not None and memory < MIN_MEMORY:
        raise BadRequest(f"limits.memory {limits.memory!r} is below {MIN_MEMORY >> 20}M: give "
                         "more, or no memory limit")
    return EnvSpec(
        program_id=body.program_id, backend=body.backend or default_backend,
        base_dir=body.base_dir, image=body.image, snapshot=body.snapshot, disk=disk or None,
        memory=memory, pids=limits.pids, cpus=limits.cpus, network=limits.network,
        ports=tuple(body.ports), setup=body.setup, lazy=body.lazy,
    )
