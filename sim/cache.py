"""A radix prefix cache at block granularity.

A block is named by its chained key (``policy.demand.block_keys``: the key of a block stands
for its whole prefix), so a sequence's cached prefix is its longest run of leading keys that
are present, exactly as in a radix tree whose edges are cut at block boundaries. Capacity is
counted in blocks. A block can be evicted when no running call locks it and no cached block
extends it (a leaf); ``evict`` takes leaves smallest ``rank`` first, and a parent whose last
child went becomes a candidate in the same pass.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Callable, Sequence


@dataclass(eq=False)
class Block:
    key: int
    parent: int | None
    last_used: float
    children: int = 0
    locks: int = 0
    owners: set[str] = field(default_factory=set)  # programs whose sequences passed here


class BlockCache:
    def __init__(self, capacity_blocks: int, rank: Callable[[Block], tuple]):
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks!r}")
        self.capacity = capacity_blocks
        self.rank = rank  # smallest evicted first
        self.blocks: dict[int, Block] = {}
        self.evicted = 0

    @property
    def used(self) -> int:
        return len(self.blocks)

    @property
    def free(self) -> int:
        return self.capacity - len(self.blocks)

    def match(self, keys: Sequence[int]) -> int:
        """How many leading ``keys`` are cached."""
        n, parent = 0, None
        for key in keys:
            block = self.blocks.get(key)
            if block is None or block.parent != parent:
                break
            n, parent = n + 1, key
        return n

    def insert(self, keys: Sequence[int], now: float, program: str | None) -> int:
        """Caches ``keys`` (the caller made room); returns how many blocks were new."""
        new = 0
        parent = None
        for key in keys:
            block = self.blocks.get(key)
            if block is None:
                block = self.blocks[key] = Block(key, parent, now)
                if parent is not None:
                    self.blocks[parent].children += 1
                new += 1
            block.last_used = now
            if program is not None:
                block.owners.add(program)
            parent = key
        if len(self.blocks) > self.capacity:
            raise RuntimeError(f"cache over capacity: {len(self.blocks)} > {self.capacity}")
        return new

    def lock(self, keys: Sequence[int], delta: int) -> None:
        for key in keys:
            self.blocks[key].locks += delta

    def touch(self, keys: Sequence[int], now: float) -> None:
        for key in keys:
            self.blocks[key].last_used = now

    def evictable(self) -> int:
        """Blocks no running call locks (a lock covers a matched prefix from the root, so
        every one of them can go, leaves first)."""
        return sum(1 for b in self.blocks.values() if b.locks == 0)

    def evict(self, n: int) -> int:
        """Evicts up to ``n`` unlocked leaves, smallest rank first; returns how many."""
        heap = [(self.rank(b), b.key) for b in self.blocks.values()
                if b.children == 0 and b.locks == 0]
        heapq.heapify(heap)
        done = 0
        while heap and done < n:
            _, key = heapq.heappop(heap)
            block = self.blocks.pop(key)
            done += 1
            if block.parent is not None:
                parent = self.blocks[block.parent]
                parent.children -= 1
                if parent.children == 0 and parent.locks == 0:
                    heapq.heappush(heap, (self.rank(parent), parent.key))
        self.evicted += done
        return done
