"""Program control messages over SGLang's own IPC (HTTP process <-> scheduler).

Program state lives in one table in the scheduler process; the HTTP process
reads and changes it only through these messages, never through a copy.
"""

from __future__ import annotations

import json
from typing import Optional

from sglang.srt.managers.io_struct import BaseReq, hook_custom_types

# Keys under sampling_params.custom_params that carry a request's identity
# from the HTTP process to the scheduler (removed there before the Req is built).
ID_KEY = "__thunderagent_program_id"
PARENT_KEY = "__thunderagent_parent_id"
FINAL_KEY = "__thunderagent_final"
PRIORITY_KEY = "__thunderagent_priority"


class ProgramControlReq(BaseReq, kw_only=True):
    op: str  # list | get | release | tool | pause | resume | stats
    program_id: Optional[str] = None
    payload: str = "{}"  # JSON object with the op's arguments


class ProgramControlOutput(BaseReq, kw_only=True):
    status: int  # an HTTP status code
    body: str  # JSON


def register_types() -> None:
    """Let SGLang's msgpack IPC decode our messages (every process that sends or receives)."""
    hook_custom_types(ProgramControlReq, ProgramControlOutput)


def reply(status: int, body: dict) -> ProgramControlOutput:
    return ProgramControlOutput(status=status, body=json.dumps(body))
