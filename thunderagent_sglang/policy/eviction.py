"""Eviction order by program state: a pure ranking, smallest key evicted first.

1. terminated programs' KV; 2. paused programs, smallest first (recompute grows
with the square of the context, so freeing small programs wastes least);
3. untagged KV, by recency as plain SGLang; 4. acting programs, ascending by
decayed value ``context_tokens * 2 ** (-tool_seconds / half_life)``, or, where the tool-duration
model predicts the acting phase's length (``predicted_s``), by the distance to its predicted
return, ``|predicted_s - tool_seconds|``, in place of ``tool_seconds``: a program predicted back
soon is kept, one predicted away long goes first from the start of its tool, and one overdue
decays again as its tool keeps running;
5. reasoning programs last. A node shared by several programs ranks as its
most protected user. The engine appends SGLang's own priority (recency by
default) to break ties, so with no tagged traffic the order is exactly SGLang's.
Protection is only a rank: the tree still evicts protected KV when nothing
else is left, so it is always revocable. In the host tier (``host_node_key``)
live programs' KV, paused ones' included, is what is kept longest.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Iterable, NamedTuple


class EvictionClass(IntEnum):
    TERMINATED = 0
    PAUSED = 1
    UNTAGGED = 2
    ACTING = 3
    REASONING = 4


class ProgramState(NamedTuple):
    paused: bool
    reasoning: bool
    context_tokens: int
    tool_seconds: float  # how long its current tool has run (acting only)
    predicted_s: float | None = None  # the predicted length of its acting phase, if any


def decayed_value(context_tokens: int, tool_seconds: float, half_life_s: float) -> float:
    return context_tokens * 2.0 ** (-max(0.0, tool_seconds) / half_life_s)


def program_key(state: ProgramState, half_life_s: float) -> tuple[int, float]:
    if state.paused:
        return EvictionClass.PAUSED, float(state.context_tokens)
    if state.reasoning:
        return EvictionClass.REASONING, float(state.context_tokens)
    seconds = state.tool_seconds
    if state.predicted_s is not None:
        seconds = abs(state.predicted_s - state.tool_seconds)  # from its predicted return
    return EvictionClass.ACTING, decayed_value(state.context_tokens, seconds, half_life_s)


def node_key(program_keys: Iterable[tuple[int, float]], retired: bool) -> tuple[int, float]:
    """The rank of a node from the keys of the live programs tagging it.

    ``retired``: a terminated program's sequence passed through it.
    """
    best = max(program_keys, default=None)
    if best is not None:
        return best
    return (EvictionClass.TERMINATED, 0.0) if retired else (EvictionClass.UNTAGGED, 0.0)


def host_node_key(has_live_tags: bool, retired: bool) -> tuple[int, float]:
    """The rank of a node held only in the host tier (host eviction).

    There the point is to keep what live programs offloaded: terminated
    programs' KV goes first, then untagged KV by recency, live programs' last.
    """
    if has_live_tags:
        return EvictionClass.REASONING, 0.0
    return (EvictionClass.TERMINATED, 0.0) if retired else (EvictionClass.UNTAGGED, 0.0)
