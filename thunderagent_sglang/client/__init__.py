"""Client helpers that tag an agent's calls as one program (X-Program-Id) and release it.

`Program` / `AsyncProgram` wrap an `openai.OpenAI` / `openai.AsyncOpenAI` client;
`program_endpoint` wraps an SGLang frontend `RuntimeEndpoint`. Neither imports SGLang.
"""

from thunderagent_sglang.client.openai_program import (
    FINAL_HEADER,
    PARENT_ID_HEADER,
    PROGRAM_ID_HEADER,
    AsyncProgram,
    Program,
    check_program_id,
    program_headers,
    release_program,
    release_program_async,
    server_root,
)
from thunderagent_sglang.client.sglang_program import (
    ProgramEndpoint,
    program_endpoint,
    program_id_of,
    tagged_class,
)

__all__ = [
    "FINAL_HEADER",
    "PARENT_ID_HEADER",
    "PROGRAM_ID_HEADER",
    "AsyncProgram",
    "Program",
    "ProgramEndpoint",
    "check_program_id",
    "program_endpoint",
    "program_id_of",
    "program_headers",
    "release_program",
    "release_program_async",
    "server_root",
    "tagged_class",
]
