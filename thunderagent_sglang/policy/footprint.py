"""The decayed demand footprint of a set of programs, exact over shared prefixes (pure Python).

Rule: a block of context counts once, at the weight of its most-needed holder. A reasoning
program (or one with a request waiting) weighs 1; an acting one weighs its decay factor
``2 ** (-tool_seconds / half_life)`` (``policy.eviction.decayed_value`` per token). So a
system prompt shared with one reasoning program counts in full however many idle acting
programs also hold it; a prefix held only by acting programs counts once, at the largest of
their factors (summing would count it many times over, taking the smallest would let an idle
program discount a fresh one's prefix). A program alone counts ``decayed_value`` exactly.

Computed as a layer cake: with the programs sorted by weight, descending, ``w_1 >= ... >= w_n``
and ``U_k`` the union of the first ``k`` contexts, the weighted union is
``sum_k (w_k - w_{k+1}) * U_k`` (``w_{n+1} = 0``): a block first held at position ``j`` is in
every ``U_k`` with ``k >= j`` and so counts ``w_j``, its largest weight. All ``U_k`` come
from one :data:`Footprint` call over the sorted ids.

A :data:`Footprint` maps ordered program ids to the union size of each prefix of them,
shared prefixes once: ``f(ids)[k] == |context(ids[0]) u ... u context(ids[k])|``.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from thunderagent_sglang.policy.demand import BlockChain, DemandLedger

__all__ = ["Footprint", "footprint_from_union", "ledger_footprint", "weighted_footprint"]

Footprint = Callable[[Sequence[str]], Sequence[int]]


def footprint_from_union(union: Callable[[Iterable[str]], int]) -> Footprint:
    """A Footprint from a set function (the union of some programs' contexts): one call per
    prefix, so O(n * union). For tests and simulators; the engine uses ``ledger_footprint``."""

    def nested(ids: Sequence[str]) -> list[int]:
        return [union(ids[: k + 1]) for k in range(len(ids))]

    return nested


def ledger_footprint(ledger: DemandLedger) -> Footprint:
    """The Footprint of a DemandLedger's contexts, in one pass: O(shared blocks + programs).

    A program's unique tokens (no other program in the ledger holds them) are a suffix of its
    chain, since holding a chained key means holding its whole prefix; they are added without
    walking. Its shared prefix is walked from its end down to the first block already counted.
    Raises KeyError for a program the ledger does not know: register a held program's prompt
    (``set_context`` then ``set_active(id, False)``) before asking about it.
    """

    def nested(ids: Sequence[str]) -> list[int]:
        seen: set[int] = set()
        total = 0
        out = []
        for pid in ids:
            if pid not in ledger:
                raise KeyError(f"program {pid!r} is not in the demand ledger")
            chain = ledger.chain_of(pid)
            if chain is not None:
                unique = ledger.unique_tokens(pid)
                total += unique
                i = len(chain) - 1 - _unique_blocks(chain, unique)
                while i >= 0 and (key := chain.key(i)) not in seen:
                    seen.add(key)
                    total += chain.length(i)
                    i -= 1
            out.append(total)
        return out

    return nested


def _unique_blocks(chain: BlockChain, unique_tokens: int) -> int:
    """How many of the chain's last blocks hold its ``unique_tokens``."""
    if unique_tokens == 0:
        return 0
    if chain.partial_key is None:
        return unique_tokens // chain.block_size
    return 1 + (unique_tokens - len(chain.tail)) // chain.block_size


def weighted_footprint(weights: dict[str, float], footprint: Footprint) -> float:
    """Sum over the union of the programs' contexts of each block's largest holder weight.

    ``weights``: program id -> weight in [0, 1]. One ``footprint`` call, over the ids sorted by
    weight descending (ties by id, so the call is deterministic).
    """
    order = sorted(weights, key=lambda pid: (-weights[pid], pid))
    if not order:
        return 0.0
    unions = footprint(order)
    total = 0.0
    for k, pid in enumerate(order):
        below = weights[order[k + 1]] if k + 1 < len(order) else 0.0
        total += (weights[pid] - below) * unions[k]
    return total
