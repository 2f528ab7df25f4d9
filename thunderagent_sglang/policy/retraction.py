"""Which running requests to retract first when decode memory runs out (pure Python).

SGLang retracts requests when the next decode step does not fit (``ScheduleBatch.
retract_decode``); by default the request with the fewest output tokens first, then the longest
input. Our order mirrors the eviction classes (``policy.eviction``):

1. requests of programs marked for pause (or paused): they stop at their tool boundary anyway;
2. untagged requests, and those of programs the views do not know, in SGLang's own order
   among themselves (so with no tagged traffic the order is exactly SGLang's);
3. requests of the other programs, lowest priority then smallest program first (re-prefill
   cost grows with the square of the context, so the smallest program loses least).

A program's requests stay together; under rules 1 and 3 programs go lowest priority, then
smallest context first. Ties keep SGLang's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from thunderagent_sglang.policy.snapshot import PAUSED, ProgramView

__all__ = ["RunningRequest", "retraction_order", "sglang_default_order"]


@dataclass(frozen=True)
class RunningRequest:
    """A running request: its program (None when untagged) and its token counts
    (``len(req.origin_input_ids)``, ``len(req.output_ids)``)."""

    program_id: str | None
    input_tokens: int
    output_tokens: int


def sglang_default_order(requests: Sequence[RunningRequest]) -> list[int]:
    """SGLang 0.5.23's default, first retracted first: fewest output tokens, then longest
    input, then the later one in the batch (its sort is stable and it pops from the end)."""
    return sorted(range(len(requests)),
                  key=lambda i: (requests[i].output_tokens, -requests[i].input_tokens, -i))


def retraction_order(requests: Sequence[RunningRequest], views: Sequence[ProgramView],
                     default_order: Sequence[int] | None = None) -> list[int]:
    """Indices into ``requests``, first to retract first (rules 1-3 of the module docstring).

    ``default_order``: SGLang's order as configured (first retracted first), which breaks ties
    and orders untagged requests; ``sglang_default_order`` when None. For SGLang's
    ``_get_decode_retraction_order`` (popped from its end) return the reverse of this list.
    """
    if default_order is None:
        default_order = sglang_default_order(requests)
    rank = {index: position for position, index in enumerate(default_order)}
    by_id = {v.program_id: v for v in views}

    def key(i: int) -> tuple:
        view = by_id.get(requests[i].program_id)
        if view is None:
            return 1, 0, 0, "", rank[i]
        cls = 0 if view.marked or view.status == PAUSED else 2
        return cls, view.priority, view.context_tokens, view.program_id, rank[i]

    return sorted(range(len(requests)), key=key)
