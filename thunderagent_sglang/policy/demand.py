"""Exact, incremental demand accounting of programs' contexts (pure Python).

Words (docs/interfaces.md): the **demand** of a program is its whole latest context, resident
or evicted; the **demand footprint** of a set of programs is the union of their contexts with
shared prefixes counted once. It cannot come from the radix tree (evicted parts are gone from
it), so it is computed here from per-program chains of block hashes.

Blocks and keys
---------------
A context is cut into blocks of ``block_size`` tokens; the last block may be partial. Block
``i`` has the chained key ``h_i = H(h_{i-1} || tokens of block i)``, so two equal keys mean two
equal whole prefixes (ending at the same position). A partial block's key differs from the key
of any full block (its input is shorter), and two partial blocks of different lengths differ.

The union is counted per block: every distinct key counts the number of tokens in its block
(``block_size`` for a full block, its length for a partial last block). This is exact at block
granularity, i.e. it is the KV footprint of the contexts when pages of ``block_size`` tokens
are shared only whole (SGLang's radix cache with ``page_size == block_size``), and it is the
exact token-level union when ``block_size == 1``. With ``block_size > 1`` two contexts that
diverge inside a block (or a partial block that is a prefix of another context's block) count
their common tokens of that one block twice: the figure exceeds the token-level union by less
than ``block_size`` tokens per branch, at most ``(programs - 1) * (block_size - 1)`` in all.

Hash: BLAKE2b with a 16-byte digest, the key being that digest as a Python int. Chosen over
Python's ``hash()`` of tuples because (a) it is stable across processes, restarts and Python
versions (keys built by one data-parallel replica or a client process can be compared with
keys built by another, and logged), and (b) 128 bits make an accidental collision, which would
silently merge two prefixes and under-count demand, negligible (about n^2 / 2^129 for n
distinct blocks), whereas ``hash()`` gives 61-64 bits. Cost: one C-level hash call per block
over the block's tokens packed as little-endian int64, about a microsecond per block.

Incremental chains
------------------
``block_keys(tokens, bs, prev=chain)`` reuses ``prev``'s full blocks and hashes only the new
tokens (plus ``prev``'s partial tail, at most ``bs - 1`` tokens). A chain's full-block keys live
in an append-only list shared with the chains that extend it: extending the most recent chain
appends in place (O(new) and no copy of the earlier keys), while branching from a chain that
was already extended by a different continuation copies the pointer list once.

Ledger
------
``DemandLedger`` keeps, per key, three integers: how many programs hold it, the XOR of their
small integer ids, and how many active programs hold it. The XOR names the sole holder
whenever the count is one, which lets the ledger keep each program's ``unique_tokens`` up to
date in O(1) per key change, so ``unique_tokens`` is O(1). Updates cost O(blocks changed): the ledger diffs the old and new
chains by their longest common block prefix, found in O(1) for the usual "context grew" case
(the new chain's key at the old chain's last index equals the old one) and by binary search
over the chained keys otherwise (equality at index i implies equality at every j < i), then
removes the old chain's remaining blocks and adds the new chain's.

Not thread-safe: one owner (the scheduler loop) builds chains and calls the ledger (chains that
extend one another share their key list, appended in place).
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from dataclasses import dataclass, field
from typing import Iterator, Sequence

__all__ = ["BlockChain", "DemandLedger", "block_keys"]

_DIGEST_SIZE = 16
_PERSON = b"ta-demand-v1"
_LITTLE = sys.byteorder == "little"


def _root(block_size: int) -> bytes:
    """h_{-1}: depends on block_size, so chains of different block sizes never share keys."""
    return hashlib.blake2b(
        block_size.to_bytes(8, "little"), digest_size=_DIGEST_SIZE, person=_PERSON
    ).digest()


def _key_bytes(key: int) -> bytes:
    return key.to_bytes(_DIGEST_SIZE, "little")


def _pack(tokens: Sequence[int]) -> memoryview:
    arr = array("q", tokens)
    if not _LITTLE:
        arr.byteswap()
    return memoryview(arr).cast("B")


def _hash_blocks(seg: Sequence[int], block_size: int, prev: bytes) -> tuple[list[int], int | None]:
    """Keys of seg's full blocks chained from ``prev``, and of its partial tail (or None)."""
    buf = _pack(seg)
    width = 8 * block_size
    n_full = len(seg) // block_size
    keys: list[int] = []
    h = prev
    for j in range(n_full):
        hasher = hashlib.blake2b(h, digest_size=_DIGEST_SIZE, person=_PERSON)
        hasher.update(buf[j * width : (j + 1) * width])
        h = hasher.digest()
        keys.append(int.from_bytes(h, "little"))
    partial = None
    if len(seg) > n_full * block_size:
        hasher = hashlib.blake2b(h, digest_size=_DIGEST_SIZE, person=_PERSON)
        hasher.update(buf[n_full * width :])
        partial = int.from_bytes(hasher.digest(), "little")
    return keys, partial


@dataclass(frozen=True, eq=False)
class BlockChain:
    """Block keys of one whole context. Build it with :func:`block_keys`.

    Block ``i`` (``0 <= i < len(chain)``) has key ``chain.key(i)`` and ``chain.length(i)``
    tokens; the first ``n_full`` blocks are full, a last partial block exists iff ``tail``
    (its tokens, kept so that the chain can be extended) is non-empty. Two chains are equal
    iff they have the same block size, token count and last key (which fixes every earlier
    key): an O(1) comparison.
    """

    block_size: int
    n_tokens: int
    n_full: int
    tail: tuple[int, ...]
    partial_key: int | None
    _full: list[int] = field(repr=False)  # append-only, shared; only [:n_full] is ours

    def __len__(self) -> int:
        return self.n_full + (self.partial_key is not None)

    def key(self, i: int) -> int:
        if 0 <= i < self.n_full:
            return self._full[i]
        if i == self.n_full and self.partial_key is not None:
            return self.partial_key
        raise IndexError(i)

    def length(self, i: int) -> int:
        if 0 <= i < self.n_full:
            return self.block_size
        if i == self.n_full and self.partial_key is not None:
            return len(self.tail)
        raise IndexError(i)

    @property
    def keys(self) -> tuple[int, ...]:
        """All block keys (O(blocks): for inspection; the ledger uses ``key(i)``)."""
        full = tuple(self._full[: self.n_full])
        return full if self.partial_key is None else full + (self.partial_key,)

    @property
    def lengths(self) -> tuple[int, ...]:
        full = (self.block_size,) * self.n_full
        return full if self.partial_key is None else full + (len(self.tail),)

    @property
    def full_tokens(self) -> int:
        return self.n_full * self.block_size

    @property
    def last_key(self) -> int | None:
        n = len(self)
        return self.key(n - 1) if n else None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BlockChain):
            return NotImplemented
        return (self.block_size, self.n_tokens, self.last_key) == (
            other.block_size,
            other.n_tokens,
            other.last_key,
        )

    def __hash__(self) -> int:
        return hash((self.block_size, self.n_tokens, self.last_key))


def block_keys(
    tokens: Sequence[int],
    block_size: int,
    *,
    prev: BlockChain | None = None,
) -> BlockChain:
    """The block chain of the context ``tokens``.

    With ``prev``, the context is taken to extend the one ``prev`` was built from: its full
    blocks are reused unread, and only ``prev``'s partial tail and the new tokens are hashed:
    O(new tokens + block_size). The part of ``tokens`` that overlaps ``prev``'s partial tail is
    checked (O(block_size)); if it differs, or the context is shorter than ``prev``'s, the chain
    is rebuilt from scratch. Tokens before ``prev``'s last full block are trusted, not checked:
    pass ``prev`` only when the context really extends it (the ledger's diff handles any other
    change).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    n_tokens = len(tokens)
    if prev is not None:
        if prev.block_size != block_size:
            raise ValueError(f"prev has block_size {prev.block_size}, not {block_size}")
        seg = _extension_segment(tokens, n_tokens, prev)
        if seg is not None:
            return _extend(seg, n_tokens, prev)
    keys, partial = _hash_blocks(tokens, block_size, _root(block_size))
    n_full = len(keys)
    return BlockChain(
        block_size=block_size,
        n_tokens=n_tokens,
        n_full=n_full,
        tail=tuple(tokens[n_full * block_size :]),
        partial_key=partial,
        _full=keys,
    )


def _extension_segment(tokens: Sequence[int], n_tokens: int,
                       prev: BlockChain) -> list[int] | None:
    """Context tokens from prev's full-block boundary on, or None if not an extension."""
    if n_tokens < prev.n_tokens:
        return None
    boundary = prev.full_tokens
    if tuple(tokens[boundary : prev.n_tokens]) != prev.tail:  # prev's partial tail: checked
        return None
    return list(tokens[boundary:])


def _extend(seg: list[int], n_tokens: int, prev: BlockChain) -> BlockChain:
    bs = prev.block_size
    n0 = prev.n_full
    h = _key_bytes(prev._full[n0 - 1]) if n0 else _root(bs)
    new_keys, partial = _hash_blocks(seg, bs, h)
    shared = prev._full
    if new_keys:  # single-threaded: the scheduler loop alone builds chains
        k = len(new_keys)
        if len(shared) == n0:  # prev is the newest chain on this list: append in place
            shared.extend(new_keys)
        elif shared[n0 : n0 + k] != new_keys:  # another continuation went first: branch
            shared = shared[:n0] + new_keys
        # else: the same continuation was appended already; share it
    n_full = n0 + len(new_keys)
    return BlockChain(
        block_size=bs,
        n_tokens=n_tokens,
        n_full=n_full,
        tail=tuple(seg[len(new_keys) * bs :]),
        partial_key=partial,
        _full=shared,
    )


def _common_blocks(old: BlockChain | None, new: BlockChain | None) -> int:
    """Length of the longest common block prefix, in O(1) for growth, else O(log blocks)."""
    if old is None or new is None:
        return 0
    n = min(len(old), len(new))
    if n == 0:
        return 0
    if old.key(n - 1) == new.key(n - 1):  # one chain extends (or equals) the other
        return n
    lo = 0  # blocks [0, lo) are known equal; block hi is known to differ
    hi = n - 1
    f = old.n_full
    if 0 < f < n and old.key(f - 1) == new.key(f - 1):  # grew, old partial block replaced
        lo = f
    while lo < hi:
        mid = (lo + hi) // 2
        if old.key(mid) == new.key(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


class _Program:
    __slots__ = ("ident", "chain", "active", "unique")

    def __init__(self, ident: int, active: bool) -> None:
        self.ident = ident
        self.chain: BlockChain | None = None
        self.active = active
        self.unique = 0  # tokens in blocks no other program holds


# Indices into a key's reference record.
_ALL, _ALL_XOR, _ACT = 0, 1, 2


class DemandLedger:
    """Demand footprint of programs' contexts, maintained incrementally.

    ``touched_keys`` counts reference-record updates (one per block added, removed or toggled):
    the unit of work of every update method.
    """

    def __init__(self, block_size: int | None = None) -> None:
        self._block_size = block_size
        self._programs: dict[str, _Program] = {}
        self._by_ident: dict[int, _Program] = {}
        self._refs: dict[int, list[int]] = {}
        self._demand = 0
        self._next_ident = 1
        self.touched_keys = 0

    # ---- queries -------------------------------------------------------------------------

    @property
    def block_size(self) -> int | None:
        return self._block_size

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._programs

    def __len__(self) -> int:
        return len(self._programs)

    def programs(self) -> Iterator[str]:
        return iter(self._programs)

    def is_active(self, program_id: str) -> bool:
        return self._programs[program_id].active

    def chain_of(self, program_id: str) -> BlockChain | None:
        """The program's current chain (pass it as ``prev`` to ``block_keys``), or None."""
        prog = self._programs.get(program_id)
        return prog.chain if prog is not None else None

    def demand_tokens(self) -> int:
        """Tokens in the union of all active programs' contexts. O(1)."""
        return self._demand

    def context_tokens(self, program_id: str) -> int:
        """Tokens of the program's context. O(1). KeyError if unknown."""
        chain = self._programs[program_id].chain
        return chain.n_tokens if chain is not None else 0

    def unique_tokens(self, program_id: str) -> int:
        """Tokens of its context that no other program (active or not) holds. O(1)."""
        return self._programs[program_id].unique

    # ---- updates -------------------------------------------------------------------------

    def set_context(self, program_id: str, chain: BlockChain) -> None:
        """Replace the program's context. A new program starts active.

        O(blocks changed + log blocks): a context that grew by k blocks costs O(k).
        """
        if self._block_size is None:
            self._block_size = chain.block_size
        elif chain.block_size != self._block_size:
            raise ValueError(f"chain block_size {chain.block_size} != ledger's {self._block_size}")
        prog = self._programs.get(program_id) or self._new_program(program_id, True)
        old = prog.chain
        common = _common_blocks(old, chain)
        if old is not None:
            for i in range(len(old) - 1, common - 1, -1):
                self._release(prog, old.key(i), old.length(i))
        prog.chain = chain
        for i in range(common, len(chain)):
            self._hold(prog, chain.key(i), chain.length(i))

    def set_active(self, program_id: str, active: bool) -> None:
        """Count (or stop counting) the program in ``demand_tokens()``. O(its blocks) on a
        change, O(1) otherwise. An unknown program is registered with an empty context."""
        prog = self._programs.get(program_id)
        if prog is None:
            self._new_program(program_id, active)
            return
        if prog.active == active:
            return
        chain = prog.chain
        if chain is not None:
            refs = self._refs
            for i in range(len(chain)):
                r = refs[chain.key(i)]
                if active:
                    self._act_inc(r, prog, chain.length(i))
                else:
                    self._act_dec(r, prog, chain.length(i))
                self.touched_keys += 1
        prog.active = active

    def remove(self, program_id: str) -> None:
        """Forget the program (terminated). O(its blocks). Unknown ids are ignored."""
        prog = self._programs.pop(program_id, None)
        if prog is None:
            return
        chain = prog.chain
        if chain is not None:
            for i in range(len(chain) - 1, -1, -1):
                self._release(prog, chain.key(i), chain.length(i))
        del self._by_ident[prog.ident]

    # ---- internals -----------------------------------------------------------------------

    def _new_program(self, program_id: str, active: bool) -> _Program:
        prog = _Program(self._next_ident, active)
        self._next_ident += 1
        self._programs[program_id] = prog
        self._by_ident[prog.ident] = prog
        return prog

    def _hold(self, prog: _Program, key: int, length: int) -> None:
        r = self._refs.get(key)
        if r is None:
            r = self._refs[key] = [0, 0, 0]
        n = r[_ALL]
        if n == 0:
            prog.unique += length
        elif n == 1:
            self._by_ident[r[_ALL_XOR]].unique -= length
        r[_ALL] = n + 1
        r[_ALL_XOR] ^= prog.ident
        if prog.active:
            self._act_inc(r, prog, length)
        self.touched_keys += 1

    def _release(self, prog: _Program, key: int, length: int) -> None:
        r = self._refs[key]
        if prog.active:
            self._act_dec(r, prog, length)
        n = r[_ALL] - 1
        r[_ALL] = n
        r[_ALL_XOR] ^= prog.ident
        if n == 0:
            prog.unique -= length
            del self._refs[key]
        elif n == 1:
            self._by_ident[r[_ALL_XOR]].unique += length
        self.touched_keys += 1

    def _act_inc(self, r: list[int], prog: _Program, length: int) -> None:
        if r[_ACT] == 0:
            self._demand += length
        r[_ACT] += 1

    def _act_dec(self, r: list[int], prog: _Program, length: int) -> None:
        r[_ACT] -= 1
        if r[_ACT] == 0:
            self._demand -= length
