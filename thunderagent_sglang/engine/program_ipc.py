"""Program control messages over SGLang's own IPC (HTTP process <-> scheduler).

Program state lives in the scheduler process's runtime; the HTTP process reads and changes it
only through these messages, never through a copy. One struct per operation, registered with
SGLang's IPC as its own ``io_struct`` types are; every one is answered by a ``ProgramReply``.
"""

from __future__ import annotations

from typing import Optional

from sglang.srt.managers.io_struct import BaseReq, hook_custom_types

# Keys under sampling_params.custom_params that carry a request's identity
# from the HTTP process to the scheduler (removed there before the Req is built).
ID_KEY = "__thunderagent_program_id"
PARENT_KEY = "__thunderagent_parent_id"
FINAL_KEY = "__thunderagent_final"
PRIORITY_KEY = "__thunderagent_priority"
HELD_KEY = "__thunderagent_held_s"  # seconds a router held the call before it came here


class ListPrograms(BaseReq, kw_only=True):
    """Every kept record (``live_only``: none of ended programs), the demand and residency
    totals, the scheduler's counters."""

    live_only: bool = False


class GetProgram(BaseReq, kw_only=True):
    program_id: str


class ReleaseProgram(BaseReq, kw_only=True):
    program_id: str


class ToolHint(BaseReq, kw_only=True):
    program_id: str
    event: str  # start | end
    expected_s: Optional[float] = None
    tool: Optional[str] = None  # the tool's name (1-64 of [A-Za-z0-9._:-])


class EnvironmentReport(BaseReq, kw_only=True):
    """The sidecar's current view of a program's tool environments (checked by the route)."""

    program_id: str
    environments: list


class MigrateProgram(BaseReq, kw_only=True):
    """A router moves the program away: its held calls answered 421, then it ends."""

    program_id: str


class PauseProgram(BaseReq, kw_only=True):
    program_id: str


class ResumeProgram(BaseReq, kw_only=True):
    program_id: str


class ProgramStats(BaseReq, kw_only=True):
    """The counters behind ``/metrics``."""


class ShutDownHeld(BaseReq, kw_only=True):
    """The server is shutting down: answer every held call 503 now."""


class DrainHeld(BaseReq, kw_only=True):
    """A writer (a weight update, a LoRA unload) waits for SGLang's calls in flight: ``on``,
    let every held call go and hold none until the matching ``on=False``."""

    on: bool


class ProgramEvents(BaseReq, kw_only=True):
    """The live view's history: events numbered above ``since``, at most ``limit``."""

    since: int = 0
    limit: int = 1000


class ProgramDigest(BaseReq, kw_only=True):
    """Every rank hashes what ranks must agree on and logs it; rank 0's answer is returned."""


class ProgramReply(BaseReq, kw_only=True):
    status: int  # an HTTP status code
    body: dict


REQUESTS = (ListPrograms, GetProgram, ReleaseProgram, ToolHint, PauseProgram, ResumeProgram,
            ProgramStats, ShutDownHeld, DrainHeld, MigrateProgram, ProgramEvents,
            EnvironmentReport, ProgramDigest)


def register_types() -> None:
    """Let SGLang's msgpack IPC decode our messages (every process that sends or receives)."""
    hook_custom_types(*REQUESTS, ProgramReply)


def reply(status: int, body: dict) -> ProgramReply:
    return ProgramReply(status=status, body=body)
