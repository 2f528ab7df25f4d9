"""Pure: a program's tool environments as the sidecar reports them, checked by one rule.

``PUT /programs/{id}/environments {"environments": [...]}`` carries the sidecar's whole current
view of one program's environments (it replaces the last one): each environment's id, backend,
state, disk bytes and cap, and its running commands. The server keeps the checked copy in the
program's record (``environments``) for the live view; it never calls the sidecar. Everything in
a report came, in the end, from an agent: sizes are bounded, strings are plain text.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_ENVIRONMENTS = 64
MAX_COMMANDS = 16  # per environment
MAX_COMMAND_CHARS = 512  # the sidecar sends at most COMMAND_CHARS
COMMAND_CHARS = 200
ENV_STATES = ("pending", "running", "paused")
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_ENV_KEYS = {"env_id", "backend", "state", "disk_bytes", "disk_cap", "commands"}
_COMMAND_KEYS = {"cmd", "started_at", "tool"}


def short_command(cmd: str) -> str:
    """A command as reported: its first COMMAND_CHARS characters (an ellipsis if cut)."""
    return cmd if len(cmd) <= COMMAND_CHARS else cmd[:COMMAND_CHARS - 1] + "\u2026"


def check_environments(body: Any) -> list[dict]:
    """The report body's ``environments``, checked and copied (known keys only); ValueError
    saying what is wrong otherwise."""
    if not isinstance(body, dict) or set(body) != {"environments"}:
        raise ValueError('the body must be {"environments": [...]} and nothing else')
    envs = body["environments"]
    if not isinstance(envs, list) or len(envs) > MAX_ENVIRONMENTS:
        raise ValueError(f"environments must be a list of at most {MAX_ENVIRONMENTS} objects")
    checked = [_environment(env, i) for i, env in enumerate(envs)]
    ids = [env["env_id"] for env in checked]
    if len(set(ids)) != len(ids):
        raise ValueError("environments lists an env_id twice")
    return checked


def _environment(env: Any, i: int) -> dict:
    where = f"environments[{i}]"
    if not isinstance(env, dict) or not set(env) <= _ENV_KEYS:
        raise ValueError(f"{where} must be an object with keys among {sorted(_ENV_KEYS)}")
    commands = env.get("commands", [])
    if not isinstance(commands, list) or len(commands) > MAX_COMMANDS:
        raise ValueError(f"{where}.commands must be a list of at most {MAX_COMMANDS} objects")
    if env.get("state") not in ENV_STATES:
        raise ValueError(f"{where}.state must be one of {', '.join(ENV_STATES)}")
    return {
        "env_id": _name(env.get("env_id"), f"{where}.env_id"),
        "backend": _name(env.get("backend"), f"{where}.backend"),
        "state": env["state"],
        "disk_bytes": _count(env.get("disk_bytes", 0), f"{where}.disk_bytes"),
        "disk_cap": (None if env.get("disk_cap") is None
                     else _count(env["disk_cap"], f"{where}.disk_cap")),
        "commands": [_command(c, f"{where}.commands[{j}]") for j, c in enumerate(commands)],
    }


def _command(command: Any, where: str) -> dict:
    if not isinstance(command, dict) or not set(command) <= _COMMAND_KEYS:
        raise ValueError(f"{where} must be an object with keys among {sorted(_COMMAND_KEYS)}")
    cmd = command.get("cmd")
    if not isinstance(cmd, str) or len(cmd) > MAX_COMMAND_CHARS:
        raise ValueError(f"{where}.cmd must be a string of at most {MAX_COMMAND_CHARS} characters")
    started = command.get("started_at")
    if isinstance(started, bool) or not isinstance(started, (int, float)) \
            or not math.isfinite(started) or started < 0:
        raise ValueError(f"{where}.started_at must be a wall-clock time in seconds")
    tool = command.get("tool")
    return {"cmd": cmd, "started_at": float(started),
            "tool": None if tool is None else _name(tool, f"{where}.tool")}


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ValueError(f"{where} must be 1-64 characters of [A-Za-z0-9._:-]")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a whole number of bytes, 0 or more")
    return value
