"""Per-program residency counters over a radix tree, kept exact by events (pure Python).

Words (docs/interfaces.md): the **resident** tokens of a program are those on the device now,
read from tags on tree nodes; eviction ranks by them (the scheduler's thrash check uses demand,
``policy/demand.py``). This module holds the tags and the counters; it never sees the tree. The
engine (``docs/design/program-cache.md`` section 5, items 4-10) translates the tree core's
events into the calls below, keyed by the core's integer node ids (never reused).

Tags and heads
--------------
A program has *heads* (any hashable: a request id while it runs, ``"last"`` for its latest
finished request). A head is the node its program's context ends at; its *path* is that node's
root path, root excluded. The program's tags are the union of its heads' paths, so the tagged
nodes of a program form a subtree hanging from the root, and a node's tags include every tag of
its descendants.

Records
-------
Only tagged nodes have a record (events on other nodes are one dict miss). A record holds the
node's last-known FULL token counts ``(dev, host)``, its parent's id (``None`` under the root),
``{program: number of that program's heads whose path passes through the node}``, the number of
active programs among those, and the heads that end at the node. The parent pointers are those
of the tree: a tagged node's ancestors are all tagged, and the tree changes a parent only by a
split, which is an event. So a head is stored as its end node alone and its path is found by
walking the records' parents: no per-head path copy to fix on a split.

Counters, per program: ``resident`` (sum of ``dev`` over its tagged nodes), ``host`` (sum of
``host``; a node on both tiers counts in both), ``unique`` (sum of ``dev`` over the nodes it
alone tags); and one global ``active_footprint`` (sum of ``dev`` over nodes with at least one
active tag; shared nodes once). Every change of a record's lengths applies the difference to
the counters of the programs on it, O(programs on the node); adding or removing one
(node, program) tag is O(1). Reads are O(1).

Costs (``touched`` counts per-(node, program) updates, the unit of work):

=================  =========================================================================
``set_path``       O(len(new path) + len(old path) below their common part), plus
                   O(programs) on each path node whose recorded lengths were wrong (none when
                   every event was delivered). Touches only the nodes that gain or lose the
                   head: a path that grew by k nodes touches k.
``drop_head``      O(its path).
``drop_program``   O(nodes the program tags + its heads).
``set_active``     O(nodes the program tags) on a change, O(1) otherwise.
``split``          O(programs on the node).
``set_lengths``,   O(programs on the node); O(1) for an untagged node.
``release``
``delete``         O(programs on the node + heads ending at it).
``clear``          O(records + programs).
=================  =========================================================================

Nothing but ``clear`` grows with the size of the tree or the number of programs.

Not thread-safe: one owner (the scheduler's tree core) should call it.
"""

from __future__ import annotations

from typing import Hashable, Iterator, Sequence

__all__ = ["Residency"]


class _Program:
    __slots__ = ("name", "active", "heads", "resident", "host", "unique")

    def __init__(self, name: str, active: bool) -> None:
        self.name = name
        self.active = active
        self.heads: dict[Hashable, int] = {}  # head -> node its path ends at
        self.resident = 0
        self.host = 0
        self.unique = 0


class _Node:
    __slots__ = ("dev", "host", "parent", "progs", "n_active", "ends")

    def __init__(self, dev: int, host: int, parent: int | None) -> None:
        self.dev = dev
        self.host = host
        self.parent = parent
        self.progs: dict[_Program, int] = {}  # program -> its heads through this node
        self.n_active = 0  # programs in progs that are active
        self.ends: set[tuple[_Program, Hashable]] | None = None  # heads ending here


class Residency:
    """Tags of programs on radix-tree nodes and the token counters they imply."""

    def __init__(self) -> None:
        self._nodes: dict[int, _Node] = {}
        self._progs: dict[str, _Program] = {}
        self._footprint = 0
        self.touched = 0

    # ---- reads (O(1) unless said) --------------------------------------------------------

    def resident_tokens(self, program: str) -> int:
        """Device tokens on the nodes the program tags; 0 for an unknown program."""
        prog = self._progs.get(program)
        return prog.resident if prog is not None else 0

    def host_tokens(self, program: str) -> int:
        """Host tokens on the nodes the program tags; 0 for an unknown program."""
        prog = self._progs.get(program)
        return prog.host if prog is not None else 0

    def unique_tokens(self, program: str) -> int:
        """Device tokens on nodes tagged by this program alone (what evicting it frees)."""
        prog = self._progs.get(program)
        return prog.unique if prog is not None else 0

    def active_footprint(self) -> int:
        """Device tokens on nodes tagged by at least one active program, shared nodes once."""
        return self._footprint

    def tagged_tokens(self) -> int:
        """Device tokens on nodes tagged by any program, shared nodes once (O(nodes))."""
        return sum(rec.dev for rec in self._nodes.values() if rec.progs)

    def is_tagged(self, node: int) -> bool:
        """Does any program tag the node? O(1)."""
        rec = self._nodes.get(node)
        return rec is not None and bool(rec.progs)

    def tag_names(self, node: int) -> list[str]:
        """Programs tagging the node, as a list (empty if untagged): ``tags`` without the
        set, for the eviction ranking's hot path. O(programs on the node)."""
        rec = self._nodes.get(node)
        return [p.name for p in rec.progs] if rec is not None else []

    def tags(self, node: int) -> frozenset[str]:
        """Programs tagging the node (empty if untagged). O(programs on the node)."""
        return frozenset(self.tag_names(node))

    def lengths(self, node: int) -> tuple[int, int] | None:
        """Last-known ``(device, host)`` tokens of a tagged node; None if untagged."""
        rec = self._nodes.get(node)
        return None if rec is None else (rec.dev, rec.host)

    def is_active(self, program: str) -> bool:
        """KeyError if unknown."""
        return self._progs[program].active

    def heads(self, program: str) -> dict[Hashable, int]:
        """{head: node its path ends at} (a copy, O(heads)); empty for an unknown program."""
        prog = self._progs.get(program)
        return dict(prog.heads) if prog is not None else {}

    def programs(self) -> Iterator[str]:
        return iter(self._progs)

    def __contains__(self, program: object) -> bool:
        return program in self._progs

    def __len__(self) -> int:
        """Number of node records (= tagged nodes)."""
        return len(self._nodes)

    # ---- program events ------------------------------------------------------------------

    def set_path(
        self, program: str, head: Hashable, path: Sequence[tuple[int, int, int]]
    ) -> None:
        """The head now ends at ``path[-1]``. ``path`` is ``[(node, device_tokens,
        host_tokens), ...]`` from the root's child down to the head's node, lengths as they are
        now (recorded: a wrong record is corrected, its difference applied to its programs).
        An empty path drops the head. A new program starts active."""
        prog = self._progs.get(program)
        if prog is None:
            prog = self._progs[program] = _Program(program, True)
        if not path:
            self._drop_head(prog, head)
            return
        nodes = self._nodes
        index: dict[int, int] = {}
        parent: int | None = None
        for i, (nid, dev, host) in enumerate(path):
            index[nid] = i
            rec = nodes.get(nid)
            if rec is None:
                nodes[nid] = _Node(dev, host, parent)
            else:
                rec.parent = parent
                if rec.dev != dev or rec.host != host:
                    self._set_len(rec, dev, host)
            parent = nid
        end = parent
        assert end is not None
        # Old path: walk up from the old end until the first node on the new path (their
        # deepest common node; everything above it is common too), dropping this head.
        start = 0
        old_end = prog.heads.get(head)
        if old_end is not None:
            old = nodes[old_end]
            old.ends.discard((prog, head))  # type: ignore[union-attr]
            nid: int | None = old_end
            while nid is not None and nid not in index:
                rec = nodes[nid]
                up = rec.parent
                self._dec(nid, rec, prog)
                nid = up
            if nid is not None:
                start = index[nid] + 1
        for i in range(start, len(path)):
            self._inc(nodes[path[i][0]], prog)
        prog.heads[head] = end
        rec = nodes[end]
        if rec.ends is None:
            rec.ends = set()
        rec.ends.add((prog, head))

    def drop_head(self, program: str, head: Hashable) -> None:
        """The head ends (a request released without a checkpoint). Unknown: no-op."""
        prog = self._progs.get(program)
        if prog is not None:
            self._drop_head(prog, head)

    def drop_program(self, program: str) -> None:
        """Forget the program (terminated): all its heads and tags. Unknown: no-op."""
        prog = self._progs.pop(program, None)
        if prog is None:
            return
        nodes = self._nodes
        mine: list[int] = []
        seen: set[int] = set()
        for head, end in prog.heads.items():
            ends = nodes[end].ends
            ends.discard((prog, head))  # type: ignore[union-attr]
            nid: int | None = end
            while nid is not None and nid not in seen:
                seen.add(nid)
                mine.append(nid)
                nid = nodes[nid].parent
        prog.heads.clear()
        for nid in mine:  # children before parents
            rec = nodes[nid]
            self._untag(nid, rec, prog)

    def set_active(self, program: str, active: bool) -> None:
        """Count (or stop counting) the program in ``active_footprint``. An unknown program is
        registered with no heads (a program paused before its first path stays paused)."""
        prog = self._progs.get(program)
        if prog is None:
            self._progs[program] = _Program(program, active)
            return
        if prog.active == active:
            return
        prog.active = active
        nodes = self._nodes
        seen: set[int] = set()
        for end in prog.heads.values():
            nid: int | None = end
            while nid is not None and nid not in seen:
                seen.add(nid)
                rec = nodes[nid]
                if active:
                    rec.n_active += 1
                    if rec.n_active == 1:
                        self._footprint += rec.dev
                else:
                    rec.n_active -= 1
                    if rec.n_active == 0:
                        self._footprint -= rec.dev
                self.touched += 1
                nid = rec.parent

    # ---- tree events ---------------------------------------------------------------------

    def split(
        self,
        child: int,
        new_parent: int,
        parent_lengths: tuple[int, int],
        child_lengths: tuple[int, int],
    ) -> None:
        """``child`` was split: ``new_parent`` (a new id) took its prefix and sits between it
        and its old parent; ``child`` keeps the suffix and its id. Every path through child
        passes through new_parent, so new_parent gets child's tags. Lengths are
        ``(device, host)`` after the split. Untagged child: no-op."""
        nodes = self._nodes
        rec = nodes.get(child)
        if rec is None:
            return
        new = _Node(0, 0, rec.parent)
        new.progs = dict(rec.progs)
        new.n_active = rec.n_active
        self.touched += len(new.progs)
        nodes[new_parent] = new
        rec.parent = new_parent
        self._set_len(new, *parent_lengths)
        self._set_len(rec, *child_lengths)

    def set_lengths(self, node: int, device_tokens: int, host_tokens: int) -> None:
        """The node now holds these FULL tokens (backup, load-back, re-insert). Untagged:
        no-op."""
        rec = self._nodes.get(node)
        if rec is not None:
            self._set_len(rec, device_tokens, host_tokens)

    def release(self, node: int, device_freed: int, host_freed: int) -> None:
        """Tokens freed on the node (eviction, demotion, host eviction): subtracted, not below
        zero. Untagged: no-op."""
        rec = self._nodes.get(node)
        if rec is not None:
            self._set_len(rec, max(0, rec.dev - device_freed), max(0, rec.host - host_freed))

    def delete(self, node: int) -> None:
        """The node left the tree (SGLang removes leaves only, after releasing their KV): its
        record and tags go, whatever lengths it still had. The heads ending at it now end at
        its parent (the rest of their context is still theirs); a head under the root is
        dropped. Untagged: no-op."""
        nodes = self._nodes
        rec = nodes.pop(node, None)
        if rec is None:
            return
        # With no tokens left, the tags leave every counter as it is.
        self._set_len(rec, 0, 0)
        self.touched += len(rec.progs)
        if rec.ends:
            parent = rec.parent
            prec = nodes[parent] if parent is not None else None
            for prog, head in rec.ends:
                if prec is None:
                    del prog.heads[head]
                else:
                    prog.heads[head] = parent  # type: ignore[assignment]
                    if prec.ends is None:
                        prec.ends = set()
                    prec.ends.add((prog, head))

    def clear(self) -> None:
        """The whole cache was flushed: no node, no head, counters zero. Programs and their
        active flags stay. O(records + programs)."""
        self._nodes.clear()
        self._footprint = 0
        for prog in self._progs.values():
            prog.heads.clear()
            prog.resident = prog.host = prog.unique = 0

    # ---- internals -----------------------------------------------------------------------

    def _drop_head(self, prog: _Program, head: Hashable) -> None:
        end = prog.heads.pop(head, None)
        if end is None:
            return
        nodes = self._nodes
        nodes[end].ends.discard((prog, head))  # type: ignore[union-attr]
        nid: int | None = end
        while nid is not None:
            rec = nodes[nid]
            up = rec.parent
            self._dec(nid, rec, prog)
            nid = up

    def _set_len(self, rec: _Node, dev: int, host: int) -> None:
        ddev = dev - rec.dev
        dhost = host - rec.host
        if not ddev and not dhost:
            return
        rec.dev = dev
        rec.host = host
        progs = rec.progs
        for prog in progs:
            prog.resident += ddev
            prog.host += dhost
        if len(progs) == 1:
            next(iter(progs)).unique += ddev
        if rec.n_active:
            self._footprint += ddev
        self.touched += len(progs)

    def _inc(self, rec: _Node, prog: _Program) -> None:
        self.touched += 1
        progs = rec.progs
        c = progs.get(prog, 0)
        if c:
            progs[prog] = c + 1
            return
        n = len(progs)
        if n == 0:
            prog.unique += rec.dev
        elif n == 1:
            next(iter(progs)).unique -= rec.dev
        progs[prog] = 1
        prog.resident += rec.dev
        prog.host += rec.host
        if prog.active:
            rec.n_active += 1
            if rec.n_active == 1:
                self._footprint += rec.dev

    def _dec(self, nid: int, rec: _Node, prog: _Program) -> None:
        self.touched += 1
        c = rec.progs[prog] - 1
        if c:
            rec.progs[prog] = c
        else:
            self._untag(nid, rec, prog, counted=True)

    def _untag(self, nid: int, rec: _Node, prog: _Program, counted: bool = False) -> None:
        """Remove the program's tag from the node whatever its count; drop an empty record."""
        if not counted:
            self.touched += 1
        del rec.progs[prog]
        self._tag_gone(rec, prog)
        if not rec.progs:
            del self._nodes[nid]

    def _tag_gone(self, rec: _Node, prog: _Program) -> None:
        """Counters after ``prog`` stopped tagging ``rec`` (already out of ``rec.progs``)."""
        prog.resident -= rec.dev
        prog.host -= rec.host
        n = len(rec.progs)
        if n == 0:
            prog.unique -= rec.dev
        elif n == 1:
            next(iter(rec.progs)).unique += rec.dev
        if prog.active:
            rec.n_active -= 1
            if rec.n_active == 0:
                self._footprint -= rec.dev
