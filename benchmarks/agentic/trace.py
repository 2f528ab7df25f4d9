"""A replayable trace: the "agentic_mooncake" JSON-lines rows others emit and replay.

One row per LLM call, a session's rows in call order::

    {"session_id": "s0-slot0-p0", "input_length": 1210, "output_length": 16,
     "hash_ids": [0, 1, 2], "timestamp": 0}
    {"session_id": "s0-slot0-p0", "input_length": 1601, "output_length": 16,
     "hash_ids": [0, 1, 3, 4], "delay": 2310, "tool_wait_ms": 2310}

- ``hash_ids``: one id per ``block_size``-token block of the prompt (the last
  may be partial); two rows share the first k ids exactly when their prompts
  share the first k blocks (ids are chained hashes of the block contents,
  numbered in order of first appearance, as in the Mooncake traces);
- ``timestamp`` (ms) on a session's first row; ``delay`` and ``tool_wait_ms``
  (ms of tool time after the previous call's answer) on the others. A reader
  accepts any of ``tool_wait_ms``, ``delay`` or a numeric ``wait_for``.

Replaying a trace rebuilds each prompt from its hash ids (each id a fixed,
seeded block of tokens), so shared prefixes are shared on the server exactly as
the ids say. Our own programs carry the model's answer into the next prompt;
in a written trace the answer is a deterministic stand-in, so prefix structure
and lengths survive the round trip; the played answers do not (they are the
server's).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable

from benchmarks.agentic.workload import Call, Program, _rng, prompts, random_tokens

DEFAULT_BLOCK_SIZE = 512  # the Mooncake traces' block size


def block_hashes(prompt: tuple[int, ...], block_size: int) -> list[bytes]:
    """Chained digests of the prompt's blocks (a block's digest covers all before it)."""
    out, chain = [], b""
    for start in range(0, len(prompt), block_size):
        block = prompt[start:start + block_size]
        chain = hashlib.sha256(chain + len(block).to_bytes(4, "big")
                               + b"".join(t.to_bytes(4, "big") for t in block)).digest()
        out.append(chain)
    return out


class HashNumbering:
    """Numbers chained block digests 0, 1, 2... in order of first appearance."""

    def __init__(self) -> None:
        self.ids: dict[bytes, int] = {}

    def __call__(self, digests: list[bytes]) -> list[int]:
        return [self.ids.setdefault(d, len(self.ids)) for d in digests]


def to_rows(programs: Iterable[Program], block_size: int = DEFAULT_BLOCK_SIZE) -> list[dict]:
    """Trace rows of ``programs`` (sessions one after another)."""
    number, rows = HashNumbering(), []
    for program in programs:
        for t, (call, prompt) in enumerate(zip(program.calls, prompts(program))):
            row = {"session_id": program.program_id, "input_length": len(prompt),
                   "output_length": call.output_tokens,
                   "hash_ids": number(block_hashes(prompt, block_size))}
            if t == 0:
                row["timestamp"] = 0
            else:
                wait_ms = round(call.tool_wait_s * 1000)
                row["delay"] = row["tool_wait_ms"] = wait_ms
            rows.append(row)
    return rows


def write(path: Path, programs: Iterable[Program], block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Write the trace; returns the number of rows."""
    rows = to_rows(programs, block_size)
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def read_rows(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            missing = {"input_length", "hash_ids"} - row.keys()
            if missing:
                raise ValueError(f"{path}:{n}: a trace row needs {sorted(missing)}")
            rows.append(row)
    return rows


def tool_wait_s(row: dict) -> float:
    for key in ("tool_wait_ms", "delay", "wait_for"):
        value = row.get(key)
        if isinstance(value, (int, float)):
            return value / 1000
    return 0.0


def block_tokens(hash_id: int, length: int, seed: int = 0) -> tuple[int, ...]:
    """The fixed tokens standing for block ``hash_id`` (its first ``length``)."""
    return random_tokens(_rng(seed, "block", hash_id), length)


def rebuild_prompt(row: dict, block_size: int, seed: int = 0) -> tuple[int, ...]:
    """A prompt of ``input_length`` tokens whose blocks follow the row's hash ids."""
    ids, length = row["hash_ids"], row["input_length"]
    if not ids or length > len(ids) * block_size or length <= (len(ids) - 1) * block_size:
        raise ValueError(f"session {row.get('session_id')}: {length} tokens do not fill "
                         f"{len(ids)} blocks of {block_size}; is the block size right?")
    tokens: tuple[int, ...] = ()
    for i, h in enumerate(ids):
        tokens += block_tokens(h, min(block_size, length - i * block_size), seed)
    return tokens


def to_programs(rows: list[dict], block_size: int = DEFAULT_BLOCK_SIZE,
                default_output: int = 16, seed: int = 0) -> list[Program]:
    """Programs replaying ``rows``: whole prompts rebuilt from hash ids, answers not carried."""
    sessions: dict[str, list[Call]] = {}
    for n, row in enumerate(rows):
        session = str(row.get("session_id", f"row-{n}"))
        calls = sessions.setdefault(session, [])
        calls.append(Call(rebuild_prompt(row, block_size, seed),
                          int(row.get("output_length") or default_output),
                          tool_wait_s(row) if calls else 0.0))
    return [Program(sid, tuple(calls), carries_output=False) for sid, calls in sessions.items()]


def read(path: Path, block_size: int = DEFAULT_BLOCK_SIZE, seed: int = 0) -> list[Program]:
    return to_programs(read_rows(path), block_size, seed=seed)
