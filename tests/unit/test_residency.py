"""Residency counters: exact figures on hand-made trees, a randomized comparison with a
brute-force recount over a simulated radix tree, and update cost counted in touched entries."""

from __future__ import annotations

import random

import pytest

from thunderagent_sglang.policy.residency import Residency

# The hand-made tree (node: tokens), all on the device unless a test moves them:
#
#   root - 1 (10) - 2 (20) - 3 (30) -+- 4 (5)    a's request
#          \___ system prompt ___/    +- 5 (7)    b's request
#                                     +- 6 (9)    a's second branch
SYS = [(1, 10, 0), (2, 20, 0), (3, 30, 0)]
A = SYS + [(4, 5, 0)]
B = SYS + [(5, 7, 0)]
A2 = SYS + [(6, 9, 0)]


def shared() -> Residency:
    res = Residency()
    res.set_path("a", "r", A)
    res.set_path("b", "r", B)
    return res


def reads(res: Residency, program: str) -> tuple[int, int, int]:
    return res.resident_tokens(program), res.host_tokens(program), res.unique_tokens(program)


def test_two_programs_share_a_system_prompt():
    res = shared()
    assert reads(res, "a") == (65, 0, 5)
    assert reads(res, "b") == (67, 0, 7)
    assert res.active_footprint() == 60 + 5 + 7
    res.set_active("b", False)
    assert res.active_footprint() == 60 + 5
    assert res.tagged_tokens() == 60 + 5 + 7  # paused or not, each node once
    res.set_active("b", True)
    assert res.tags(1) == res.tags(2) == res.tags(3) == frozenset({"a", "b"})
    assert res.tags(4) == {"a"} and res.tags(5) == {"b"}
    assert res.tags(99) == frozenset() and res.lengths(99) is None
    assert res.is_tagged(4) and not res.is_tagged(99)
    assert res.lengths(3) == (30, 0) and len(res) == 5
    assert res.heads("a") == {"r": 4}
    assert reads(res, "nobody") == (0, 0, 0) and "nobody" not in res


def test_split_of_a_shared_node():
    res = shared()
    before = res.touched
    res.split(2, 10, (8, 0), (12, 0))  # 10 takes the first 8 tokens of 2
    assert res.touched - before == 2 + 2 + 2  # copy a, b; lengths of 10; lengths of 2
    assert res.tags(10) == {"a", "b"} and res.lengths(10) == (8, 0)
    assert res.lengths(2) == (12, 0)
    assert reads(res, "a") == (65, 0, 5) and reads(res, "b") == (67, 0, 7)
    assert res.active_footprint() == 72
    # the new parent is on both paths: dropping a's head untags it too
    res.drop_head("a", "r")
    assert res.tags(10) == res.tags(2) == {"b"}
    assert reads(res, "a") == (0, 0, 0) and reads(res, "b") == (67, 0, 67)
    assert len(res) == 5  # 1, 10, 2, 3, 5
    res.drop_head("b", "r")
    assert len(res) == 0 and res.active_footprint() == 0
    assert not any(res.is_tagged(n) for n in (1, 2, 3, 5, 10))


def test_split_of_a_backed_up_node_and_of_an_untagged_node():
    res = shared()
    res.set_lengths(5, 7, 7)  # b's leaf backed up
    res.split(5, 11, (3, 3), (4, 4))
    assert res.lengths(11) == (3, 3) and res.lengths(5) == (4, 4)
    assert reads(res, "b") == (67, 7, 7)
    before = (res.touched, len(res))
    res.split(77, 78, (1, 0), (1, 0))  # untagged: nothing
    assert (res.touched, len(res)) == before and res.tags(78) == frozenset()


def test_eviction_of_a_leaf_then_its_deletion():
    res = shared()
    res.release(4, 5, 0)  # a's leaf evicted, not backed up
    assert reads(res, "a") == (60, 0, 0)
    assert res.active_footprint() == 67
    assert res.tags(4) == {"a"} and res.lengths(4) == (0, 0)
    res.delete(4)
    assert res.tags(4) == frozenset() and len(res) == 4
    assert res.heads("a") == {"r": 3}  # the head now ends at the parent
    assert reads(res, "a") == (60, 0, 0) and reads(res, "b") == (67, 0, 7)
    # the moved head still tags its path: dropping it untags 1-3 for a
    res.drop_head("a", "r")
    assert res.tags(3) == {"b"} and reads(res, "b") == (67, 0, 67)
    res.delete(4)  # unknown now: no-op
    res.release(4, 5, 5)


def test_delete_drops_a_head_under_the_root_and_deleting_with_tokens_left():
    res = Residency()
    res.set_path("p", "r", [(1, 4, 2)])
    res.set_path("q", "r", [(1, 4, 2), (2, 3, 0)])
    res.delete(2)  # lengths not released first: the record takes them away anyway
    assert reads(res, "q") == (4, 2, 0) and res.heads("q") == {"r": 1}
    res.delete(1)
    assert res.heads("p") == {} and res.heads("q") == {}
    assert reads(res, "p") == reads(res, "q") == (0, 0, 0) and len(res) == 0
    assert res.active_footprint() == 0


def test_demotion_to_host_and_load_back():
    res = shared()
    res.set_lengths(5, 7, 7)  # backup (write-through)
    assert reads(res, "b") == (67, 7, 7)
    res.release(5, 7, 0)  # demoted: device freed, host kept
    assert reads(res, "b") == (60, 7, 0)
    assert res.active_footprint() == 65
    res.set_lengths(5, 7, 7)  # loaded back
    assert reads(res, "b") == (67, 7, 7) and res.active_footprint() == 72
    res.release(5, 0, 7)  # host duplicate released
    assert reads(res, "b") == (67, 0, 7)
    res.release(5, 100, 100)  # more than recorded: floors at zero
    assert res.lengths(5) == (0, 0) and reads(res, "b") == (60, 0, 0)


def test_head_replaced_by_a_longer_path_touches_only_new_nodes():
    res = shared()
    before = res.touched
    res.set_path("a", "r", A + [(7, 11, 0), (8, 2, 0)])
    assert res.touched - before == 2
    assert reads(res, "a") == (78, 0, 18) and res.heads("a") == {"r": 8}
    assert res.tags(4) == {"a"}
    # same path again: nothing
    before = res.touched
    res.set_path("a", "r", A + [(7, 11, 0), (8, 2, 0)])
    assert res.touched == before
    # truncated to the system prompt, then moved to another branch
    res.set_path("a", "r", SYS)
    assert res.tags(4) == res.tags(7) == res.tags(8) == frozenset()
    assert reads(res, "a") == (60, 0, 0) and len(res) == 4
    before = res.touched
    res.set_path("a", "r", A2)
    assert res.touched - before == 1 and reads(res, "a") == (69, 0, 9)
    before = res.touched
    res.set_path("a", "r", A)  # sibling: one out, one in
    assert res.touched - before == 2 and res.tags(6) == frozenset()
    res.set_path("a", "r", [])  # an empty path drops the head
    assert res.heads("a") == {} and reads(res, "a") == (0, 0, 0)


def test_set_path_corrects_stale_lengths():
    res = shared()
    res.set_path("a", "r", [(1, 10, 10), (2, 20, 0), (3, 0, 30), (4, 5, 0)])  # missed events
    assert res.lengths(1) == (10, 10) and res.lengths(3) == (0, 30)
    assert reads(res, "a") == (35, 40, 5) and reads(res, "b") == (37, 40, 7)
    assert res.active_footprint() == 42


def test_fork_two_heads():
    res = shared()
    res.set_path("a", "r2", A2)
    assert reads(res, "a") == (74, 0, 14)
    assert res.tags(6) == {"a"} and res.tags(3) == {"a", "b"}
    res.drop_head("a", "r")
    assert reads(res, "a") == (69, 0, 9) and res.tags(4) == frozenset()
    res.drop_head("a", "r")  # unknown head: no-op
    res.drop_head("zz", "r")  # unknown program: no-op
    res.set_path("a", "r", A)
    before = res.touched
    res.drop_program("a")  # 1, 2, 3, 4, 6 once each
    assert res.touched - before == 5
    assert "a" not in res and reads(res, "a") == (0, 0, 0)
    assert reads(res, "b") == (67, 0, 67) and res.active_footprint() == 67
    assert len(res) == 4
    res.drop_program("a")  # idempotent


def test_set_active_affects_only_the_footprint():
    res = shared()
    res.set_path("a", "r2", A2)
    res.set_active("a", False)
    assert not res.is_active("a")
    assert res.active_footprint() == 67
    assert reads(res, "a") == (74, 0, 14) and reads(res, "b") == (67, 0, 7)
    res.set_active("a", False)  # idempotent
    assert res.active_footprint() == 67
    res.set_active("b", False)
    assert res.active_footprint() == 0
    res.set_active("a", True)
    assert res.active_footprint() == 74
    # lengths changing on inactive / active nodes
    res.release(5, 7, 0)
    assert res.active_footprint() == 74
    res.release(6, 9, 0)
    assert res.active_footprint() == 65
    # a program paused before its first path stays paused
    res.set_active("c", False)
    res.set_path("c", "r", SYS + [(9, 4, 0)])
    assert not res.is_active("c") and res.active_footprint() == 65
    assert reads(res, "c") == (64, 0, 4)


def test_clear():
    res = shared()
    res.set_active("b", False)
    res.clear()
    assert len(res) == 0 and res.active_footprint() == 0
    assert reads(res, "a") == reads(res, "b") == (0, 0, 0)
    assert res.tags(1) == frozenset() and res.heads("a") == {}
    assert "a" in res and not res.is_active("b")
    res.set_path("b", "r", B)
    assert res.active_footprint() == 0 and reads(res, "b") == (67, 0, 67)


# ---------------------------------------------------------------------------------------
# Randomized comparison with a brute-force recount over a simulated radix tree


class SimNode:
    __slots__ = ("parent", "size", "dev", "host", "children")

    def __init__(self, parent: int | None, size: int, dev: int, host: int) -> None:
        self.parent = parent
        self.size = size
        self.dev = dev
        self.host = host
        self.children: set[int] = set()


ROOT = 0


class Sim:
    """A radix tree (node ids, parents, FULL device/host tokens) plus program heads, driving a
    Residency with the events an engine would send."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.res = Residency()
        self.nodes: dict[int, SimNode] = {ROOT: SimNode(None, 0, 0, 0)}
        self.next_id = 1
        self.heads: dict[str, dict[object, int]] = {}
        self.active: dict[str, bool] = {}
        self.next_prog = 0

    # ---- tree helpers --------------------------------------------------------------------

    def new_node(self, parent: int, size: int) -> int:
        nid = self.next_id
        self.next_id += 1
        self.nodes[nid] = SimNode(parent, size, size, 0)
        self.nodes[parent].children.add(nid)
        return nid

    def path(self, nid: int) -> list[int]:
        out = []
        while nid != ROOT:
            out.append(nid)
            nid = self.nodes[nid].parent
        return out[::-1]

    def non_root(self) -> list[int]:
        return [n for n in self.nodes if n != ROOT]

    def do_split(self, child: int) -> int:
        node = self.nodes[child]
        k = self.rng.randint(1, node.size - 1)
        new = self.next_id
        self.next_id += 1
        par = node.parent
        pnode = SimNode(par, k, k if node.dev else 0, k if node.host else 0)
        self.nodes[new] = pnode
        self.nodes[par].children.discard(child)
        self.nodes[par].children.add(new)
        pnode.children.add(child)
        node.parent = new
        node.size -= k
        node.dev = node.size if node.dev else 0
        node.host = node.size if node.host else 0
        self.res.split(child, new, (pnode.dev, pnode.host), (node.dev, node.host))
        return new

    def do_delete(self, nid: int, release_first: bool = True) -> None:
        node = self.nodes[nid]
        assert not node.children
        if release_first and (node.dev or node.host):
            self.res.release(nid, node.dev, node.host)
        self.res.delete(nid)
        del self.nodes[nid]
        self.nodes[node.parent].children.discard(nid)
        for heads in self.heads.values():
            for h, end in list(heads.items()):
                if end == nid:
                    if node.parent == ROOT:
                        del heads[h]
                    else:
                        heads[h] = node.parent

    # ---- operations ----------------------------------------------------------------------

    def op_insert(self) -> None:
        rng = self.rng
        progs = list(self.heads)
        if not progs or rng.random() < 0.15:
            prog = f"p{self.next_prog}"
            self.next_prog += 1
        else:
            prog = rng.choice(progs)
        head = rng.choice(["last", "r0", "r1", "r2"])
        base = rng.choice(list(self.nodes))
        if base != ROOT and self.nodes[base].size > 1 and rng.random() < 0.3:
            base = self.do_split(base)  # the prompt ends inside a node: it is split first
        end = base
        for _ in range(rng.randint(0 if base != ROOT else 1, 3)):
            end = self.new_node(end, rng.randint(1, 6))
        path = self.path(end)
        for nid in path:  # evicted nodes on the way are restored from the request's KV
            node = self.nodes[nid]
            if node.dev == 0:
                node.dev = node.size
                self.res.set_lengths(nid, node.dev, node.host)
        old_end = self.heads.get(prog, {}).get(head)
        old = set(self.path(old_end)) if old_end is not None else set()
        before = self.res.touched
        self.res.set_path(prog, head, [(n, self.nodes[n].dev, self.nodes[n].host) for n in path])
        assert self.res.touched - before == len(old ^ set(path))
        self.heads.setdefault(prog, {})[head] = end
        self.active.setdefault(prog, True)

    def op_split(self) -> None:
        cands = [n for n in self.non_root() if self.nodes[n].size > 1]
        if cands:
            self.do_split(self.rng.choice(cands))

    def op_evict_device_leaf(self) -> None:
        nodes = self.nodes
        cands = [
            n
            for n in self.non_root()
            if nodes[n].dev and not any(nodes[c].dev for c in nodes[n].children)
        ]
        if not cands:
            return
        nid = self.rng.choice(cands)
        node = nodes[nid]
        self.res.release(nid, node.dev, 0)
        node.dev = 0
        if not node.host and not node.children:  # unbacked leaf: deleted
            self.do_delete(nid)

    def op_backup(self) -> None:
        cands = [n for n in self.non_root() if self.nodes[n].dev and not self.nodes[n].host]
        if cands:
            nid = self.rng.choice(cands)
            node = self.nodes[nid]
            node.host = node.size
            self.res.set_lengths(nid, node.dev, node.host)

    def op_host_evict(self) -> None:
        cands = [n for n in self.non_root() if self.nodes[n].host]
        if not cands:
            return
        nid = self.rng.choice(cands)
        node = self.nodes[nid]
        self.res.release(nid, 0, node.host)
        node.host = 0
        if not node.dev and not node.children:
            self.do_delete(nid)

    def op_load_back(self) -> None:
        cands = [n for n in self.non_root() if not self.nodes[n].dev and self.nodes[n].host]
        if cands:
            nid = self.rng.choice(cands)
            node = self.nodes[nid]
            node.dev = node.size
            self.res.set_lengths(nid, node.dev, node.host)

    def op_delete_leaf(self) -> None:
        nodes = self.nodes
        cands = [n for n in self.non_root() if not nodes[n].children]
        evicted = [n for n in cands if not nodes[n].dev]
        if evicted and self.rng.random() < 0.7:
            cands = evicted
        if cands:
            self.do_delete(self.rng.choice(cands), release_first=self.rng.random() < 0.8)

    def op_toggle(self) -> None:
        progs = list(self.active)
        if not progs or self.rng.random() < 0.05:
            prog = f"p{self.next_prog}"  # known only by its flag
            self.next_prog += 1
            flag = self.rng.random() < 0.5
            self.heads[prog] = {}
        else:
            prog = self.rng.choice(progs)
            flag = not self.active[prog] if self.rng.random() < 0.8 else self.active[prog]
        self.res.set_active(prog, flag)
        self.active[prog] = flag

    def op_drop_head(self) -> None:
        progs = list(self.heads)
        if not progs:
            return
        prog = self.rng.choice(progs)
        head = self.rng.choice(["last", "r0", "r1", "r2"])
        end = self.heads[prog].get(head)
        before = self.res.touched
        self.res.drop_head(prog, head)
        assert self.res.touched - before == (len(self.path(end)) if end is not None else 0)
        self.heads[prog].pop(head, None)

    def op_drop_program(self) -> None:
        progs = list(self.heads)
        if progs:
            prog = self.rng.choice(progs)
            self.res.drop_program(prog)
            del self.heads[prog], self.active[prog]

    def op_clear(self) -> None:
        self.res.clear()
        self.nodes = {ROOT: SimNode(None, 0, 0, 0)}
        for heads in self.heads.values():
            heads.clear()

    # ---- brute force ---------------------------------------------------------------------

    def check(self) -> None:
        res = self.res
        tagged: dict[int, set[str]] = {}
        for prog, heads in self.heads.items():
            for end in heads.values():
                for nid in self.path(end):
                    tagged.setdefault(nid, set()).add(prog)
        nodes = self.nodes
        for prog in self.heads:
            mine = [n for n, t in tagged.items() if prog in t]
            assert res.resident_tokens(prog) == sum(nodes[n].dev for n in mine)
            assert res.host_tokens(prog) == sum(nodes[n].host for n in mine)
            assert res.unique_tokens(prog) == sum(nodes[n].dev for n in mine if len(tagged[n]) == 1)
            assert res.is_active(prog) == self.active[prog]
            assert res.heads(prog) == self.heads[prog]
        assert set(res.programs()) == set(self.heads)
        footprint = sum(
            nodes[n].dev for n, t in tagged.items() if any(self.active[p] for p in t)
        )
        assert res.active_footprint() == footprint
        for nid, node in nodes.items():
            assert res.tags(nid) == tagged.get(nid, set())
            if nid in tagged:
                assert res.lengths(nid) == (node.dev, node.host)
        assert len(res) == len(tagged)  # untagged nodes have no record


def run_random(seed: int, n_ops: int) -> None:
    rng = random.Random(seed)
    sim = Sim(rng)
    ops = [
        (sim.op_insert, 22),
        (sim.op_split, 8),
        (sim.op_evict_device_leaf, 14),
        (sim.op_backup, 8),
        (sim.op_host_evict, 6),
        (sim.op_load_back, 8),
        (sim.op_delete_leaf, 6),
        (sim.op_toggle, 10),
        (sim.op_drop_head, 10),
        (sim.op_drop_program, 3),
        (sim.op_clear, 0.3),
    ]
    funcs = [f for f, _ in ops]
    weights = [w for _, w in ops]
    for _ in range(n_ops):
        op = rng.choices(funcs, weights)[0]
        if op is sim.op_insert and len(sim.nodes) > 60:
            op = sim.op_delete_leaf
        op()
        sim.check()
    for prog in list(sim.heads):
        sim.res.drop_program(prog)
    assert len(sim.res) == 0 and sim.res.active_footprint() == 0


@pytest.mark.parametrize("seed", range(8))
def test_random_operations_match_brute_force(seed):
    run_random(seed, 3000)


# ---------------------------------------------------------------------------------------
# Cost: an event touches the node's own programs, whatever else the structure holds


def crowded(n_others: int) -> Residency:
    """a and b share node 2 under a system-prompt node 1 that n_others programs also tag,
    each with a branch of its own (node 1000 + i)."""
    res = Residency()
    for i in range(n_others):
        res.set_path(f"o{i}", "r", [(1, 10, 0), (1000 + i, 4, 0)])
    res.set_path("a", "r", [(1, 10, 0), (2, 8, 0), (3, 5, 0)])
    res.set_path("b", "r", [(1, 10, 0), (2, 8, 0)])
    return res


def costs(n_others: int) -> tuple[int, ...]:
    res = crowded(n_others)
    out = []

    def step(fn, *args):
        before = res.touched
        fn(*args)
        out.append(res.touched - before)

    step(res.set_lengths, 2, 8, 8)  # backup of the shared node
    step(res.release, 2, 8, 0)  # demotion
    step(res.set_lengths, 2, 8, 8)  # load-back
    step(res.set_lengths, 555_555, 1, 1)  # untagged: a dict miss
    step(res.split, 2, 4, (3, 3), (5, 5))
    step(res.set_path, "a", "r", [(1, 10, 0), (4, 3, 3), (2, 5, 5), (3, 5, 0), (9, 2, 0)])
    step(res.set_active, "a", False)
    step(res.release, 9, 2, 0)
    step(res.delete, 9)
    step(res.drop_head, "b", "r")
    assert res.resident_tokens("a") == 10 + 3 + 5 + 5
    return tuple(out)


def test_event_cost_does_not_grow_with_other_nodes_or_programs():
    small = costs(10)
    large = costs(10_000)
    assert small == large
    assert small[0] == 2  # set_lengths on a node tagged by two programs: two entries
    assert small == (2, 2, 2, 0, 2 + 2 + 2, 1, 5, 1, 1, 3)
