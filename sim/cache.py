"""A radix prefix cache at block granularity.

A block is named by its chained key (``policy.demand.block_keys``: the key of a block stands
for its whole prefix), so a sequence's cached prefix is its longest run of leading keys that
are present, exactly as in a radix tree whose edges are cut at block boundaries. Capacity is
counted in blocks. A block can be evicted when no running call locks it and no cached block
extends it (a leaf); ``evict`` takes leaves smallest ``rank`` first, and a parent whose last
child went becomes a candidate in the same pass.

``HostTier`` is SGLang's HiCache host tier as modelled here: a block evicted from the device
is written to the host (write-back on eviction), a prefix continues from the device into the
host (those blocks are loaded back, not recomputed), and the host evicts its own blocks
smallest ``rank`` first when full.
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
    def __init__(self, capacity_blocks: int, rank: Callable[[Block], tuple],
                 spill: Callable[[Block], None] | None = None):
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks!r}")
        self.capacity = capacity_blocks
        self.rank = rank  # smallest evicted first
        self.spill = spill  # where an evicted block goes (a host tier), if anywhere
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
            if self.spill is not None:
                self.spill(block)
            if block.parent is not None:
                parent = self.blocks[block.parent]
                parent.children -= 1
                if parent.children == 0 and parent.locks == 0:
                    heapq.heappush(heap, (self.rank(parent), parent.key))
        self.evicted += done
        return done

    def remove(self, keys: set[int], spill: bool) -> int:
        """Evicts these blocks now (a paused program's own, offloaded or dropped), leaves
        first, as far as they go: a locked block, or one a block outside ``keys`` extends,
        stays (and so do its ancestors). ``spill``: to the host tier, as an eviction."""
        done, progress = 0, True
        while progress:
            progress = False
            for key in [k for k in keys if k in self.blocks]:
                block = self.blocks[key]
                if block.children or block.locks:
                    continue
                del self.blocks[key]
                done, progress = done + 1, True
                if spill and self.spill is not None:
                    self.spill(block)
                if block.parent is not None:
                    self.blocks[block.parent].children -= 1
        self.evicted += done
        return done


class HostTier:
    def __init__(self, capacity_blocks: int, rank: Callable[[Block], tuple]):
        if capacity_blocks <= 0:
            raise ValueError(f"capacity_blocks must be positive, got {capacity_blocks!r}")
        self.capacity = capacity_blocks
        self.rank = rank  # smallest evicted first
        self.blocks: dict[int, Block] = {}
        self.written = self.loaded = self.evicted = 0

    def write(self, block: Block) -> None:
        """A block the device evicted (its children and locks do not matter here)."""
        if block.key not in self.blocks:
            if len(self.blocks) >= self.capacity:
                victim = min(self.blocks.values(), key=self.rank)
                del self.blocks[victim.key]
                self.evicted += 1
            self.written += 1
        self.blocks[block.key] = Block(block.key, block.parent, block.last_used,
                                       owners=set(block.owners))

    def match_after(self, keys: Sequence[int], device: int) -> int:
        """How many keys after the ``device`` cached ones continue the prefix in the host."""
        n = 0
        parent = keys[device - 1] if device else None
        for key in keys[device:]:
            block = self.blocks.get(key)
            if block is None or block.parent != parent:
                break
            n, parent = n + 1, key
        return n

    def touch(self, keys: Sequence[int], now: float) -> None:
        self.loaded += len(keys)
        for key in keys:
            self.blocks[key].last_used = now
