"""Demand accounting: exact figures, a randomized brute-force comparison, and update cost."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from thunderagent_sglang.policy.demand import BlockChain, DemandLedger, block_keys

BS = 4


def toks(n: int, base: int) -> list[int]:
    return [base + i for i in range(n)]


# ---------------------------------------------------------------------------------------
# block_keys


def test_chain_shape_and_partial_block():
    chain = block_keys(toks(10, 0), BS)
    assert len(chain) == 3 and chain.n_full == 2 and chain.n_tokens == 10
    assert chain.lengths == (4, 4, 2)
    assert chain.tail == (8, 9)
    assert block_keys([], BS).keys == ()
    assert len(set(chain.keys)) == 3


def test_equal_keys_mean_equal_prefixes():
    a = block_keys([1, 2, 3, 4, 5, 6, 7, 8], BS)
    b = block_keys([1, 2, 3, 4, 9, 6, 7, 8], BS)
    c = block_keys([0, 2, 3, 4, 5, 6, 7, 8], BS)
    assert a.key(0) == b.key(0) and a.key(1) != b.key(1)
    # same second block, different first block: chained key differs
    assert a.key(1) != c.key(1)
    # a partial block's key differs from the full block starting with the same tokens
    assert block_keys([1, 2, 3], BS).key(0) != a.key(0)
    # chains of different block sizes never share keys
    assert block_keys([1, 2], 2).key(0) != block_keys([1, 2], 3).key(0)


def test_keys_are_stable_across_processes():
    import subprocess
    import sys

    code = (
        "from thunderagent_sglang.policy.demand import block_keys;"
        "print(block_keys(list(range(10)), 4).keys)"
    )
    out = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert out == {repr(block_keys(list(range(10)), 4).keys) + "\n"}


@pytest.mark.parametrize("n0", [0, 3, 4, 9, 12])
@pytest.mark.parametrize("k", [0, 1, 3, 4, 7, 13])
def test_incremental_equals_scratch(n0, k):
    full = toks(n0 + k, 100)
    prev = block_keys(full[:n0], BS)
    scratch = block_keys(full, BS)
    inc = block_keys(full, BS, prev=prev)
    assert inc.keys == scratch.keys and inc.lengths == scratch.lengths
    assert inc.tail == scratch.tail and inc == scratch


class _Guarded(list):
    """A list that fails when an index below ``floor`` is read."""

    floor = 0

    def __getitem__(self, item):
        lo = (item.start or 0) if isinstance(item, slice) else item
        assert lo >= self.floor, f"read below {self.floor}: {item}"
        return super().__getitem__(item)


def test_incremental_reads_only_new_tokens():
    full = toks(4000 + 6, 0)
    prev = block_keys(full[:4001], BS)  # 1000 full blocks + 1 token
    guarded = _Guarded(full)
    guarded.floor = prev.full_tokens
    inc = block_keys(guarded, BS, prev=prev)
    assert inc == block_keys(full, BS) and inc.keys == block_keys(full, BS).keys
    # the earlier keys are shared, not copied
    assert inc._full is prev._full


def test_incremental_falls_back_or_refuses_when_not_an_extension():
    prev = block_keys([1, 2, 3, 4, 5, 6], BS)
    changed_tail = [1, 2, 3, 4, 5, 7, 8]
    assert block_keys(changed_tail, BS, prev=prev).keys == block_keys(changed_tail, BS).keys
    shorter = [1, 2, 3]
    assert block_keys(shorter, BS, prev=prev).keys == block_keys(shorter, BS).keys
    with pytest.raises(ValueError):
        block_keys([9], 3, prev=prev)  # block size mismatch


def test_branching_from_an_extended_chain():
    prompt = block_keys(toks(8, 0), BS)
    a = block_keys(toks(8, 0) + toks(8, 50), BS, prev=prompt)
    b = block_keys(toks(8, 0) + toks(8, 90), BS, prev=prompt)  # branches: own list
    a2 = block_keys(toks(8, 0) + toks(8, 50), BS, prev=prompt)  # same continuation: shared
    assert a.keys == block_keys(toks(8, 0) + toks(8, 50), BS).keys
    assert b.keys == block_keys(toks(8, 0) + toks(8, 90), BS).keys
    assert a2._full is a._full and b._full is not a._full
    assert prompt.keys == block_keys(toks(8, 0), BS).keys


# ---------------------------------------------------------------------------------------
# DemandLedger: hand-made cases


def test_two_programs_share_a_system_prompt():
    system = toks(12, 1000)  # 3 full blocks
    a = system + toks(8, 0)  # + 2 full blocks
    b = system + toks(6, 500)  # + 1 full block + partial of 2
    led = DemandLedger()
    led.set_context("a", block_keys(a, BS))
    led.set_context("b", block_keys(b, BS))
    assert led.context_tokens("a") == 20 and led.context_tokens("b") == 18
    assert led.demand_tokens() == 12 + 8 + 6
    assert led.unique_tokens("a") == 8 and led.unique_tokens("b") == 6
    led.set_active("a", False)
    assert led.demand_tokens() == 18  # b alone: what demand_without("a") answered
    led.set_active("a", True)

    # b grows: its partial block becomes full, a new partial block appears
    b2 = b + [7, 7, 7]
    led.set_context("b", block_keys(b2, BS, prev=led.chain_of("b")))
    assert led.demand_tokens() == 12 + 8 + 9 and led.unique_tokens("b") == 9


def test_grpo_group_shares_a_task_prompt():
    prompt = toks(40, 7)  # 10 full blocks
    chain = block_keys(prompt, BS)
    led = DemandLedger()
    for i in range(4):
        sample = prompt + toks(10, 100 * (i + 1))  # 2 full blocks + partial of 2
        led.set_context(f"s{i}", block_keys(sample, BS, prev=chain))
    assert led.demand_tokens() == 40 + 4 * 10
    for i in range(4):
        assert led.unique_tokens(f"s{i}") == 10
    # the whole group paused but one: the prompt is still counted once
    for i in range(1, 4):
        led.set_active(f"s{i}", False)
    assert led.demand_tokens() == 50
    assert led.unique_tokens("s0") == 10  # unique counts inactive programs too


def test_pause_resume_and_remove():
    led = DemandLedger()
    led.set_context("a", block_keys(toks(10, 0), BS))
    led.set_context("b", block_keys(toks(10, 0) + [99] * 5, BS))
    assert led.demand_tokens() == 8 + 2 + 4 + 3  # a's partial [8,9] vs b's full [8,9,99,99]
    led.set_active("b", False)
    assert led.demand_tokens() == 10 and not led.is_active("b")
    led.set_active("b", False)  # idempotent
    assert led.demand_tokens() == 10
    led.set_active("b", True)
    assert led.demand_tokens() == 17
    led.set_active("a", False)
    assert led.demand_tokens() == 15
    assert led.unique_tokens("a") == 2 and led.unique_tokens("b") == 7
    led.remove("b")
    assert "b" not in led and led.demand_tokens() == 0
    assert led.unique_tokens("a") == 10
    led.set_active("a", True)
    assert led.demand_tokens() == 10
    led.remove("a")
    led.remove("a")  # idempotent
    assert led.demand_tokens() == 0 and len(led) == 0 and led._refs == {}
    with pytest.raises(KeyError):
        led.context_tokens("a")


def test_paused_before_first_context_stays_paused():
    led = DemandLedger()
    led.set_active("p", False)
    assert led.context_tokens("p") == 0
    led.set_context("p", block_keys(toks(9, 0), BS))
    assert led.demand_tokens() == 0 and led.unique_tokens("p") == 9


def test_context_that_changes_its_earlier_prefix():
    system = toks(12, 1000)
    led = DemandLedger()
    led.set_context("other", block_keys(system + toks(4, 0), BS))
    led.set_context("p", block_keys(system + toks(20, 50), BS))
    assert led.demand_tokens() == 12 + 4 + 20
    # the client rewrites history after the system prompt (e.g. summarised its context)
    before = led.touched_keys
    led.set_context("p", block_keys(system + toks(6, 800), BS))
    assert led.touched_keys - before == 5 + 2  # 5 old blocks out, 2 new blocks in
    assert led.demand_tokens() == 12 + 4 + 6
    assert led.unique_tokens("p") == 6 and led.unique_tokens("other") == 4
    # a change inside the system prompt itself: nothing shared any more
    led.set_context("p", block_keys([0] + system[1:] + toks(6, 800), BS))
    assert led.demand_tokens() == 16 + 18 and led.unique_tokens("other") == 16
    # truncation
    led.set_context("p", block_keys(system[:5], BS))
    assert led.demand_tokens() == 16 + 1 and led.unique_tokens("p") == 1


def test_block_size_mismatch_is_refused():
    led = DemandLedger()
    led.set_context("a", block_keys([1, 2, 3], 4))
    with pytest.raises(ValueError):
        led.set_context("b", block_keys([1, 2, 3], 8))


def test_block_size_one_is_token_exact():
    led = DemandLedger()
    led.set_context("a", block_keys([1, 2, 3, 4, 5], 1))
    led.set_context("b", block_keys([1, 2, 3, 9], 1))
    assert led.demand_tokens() == 6 and led.unique_tokens("b") == 1


# ---------------------------------------------------------------------------------------
# Randomized comparison with a brute-force recount


def block_set(tokens: tuple[int, ...], bs: int) -> dict[tuple[int, ...], int]:
    """Blocks of a context as {whole prefix up to the block's end: tokens in the block}."""
    ends = list(range(bs, len(tokens) + 1, bs))
    if len(tokens) % bs:
        ends.append(len(tokens))
    return {tokens[:e]: e - ((e - 1) // bs) * bs for e in ends}


def union_tokens(sets) -> int:
    merged: dict[tuple[int, ...], int] = {}
    for s in sets:
        merged.update(s)
    return sum(merged.values())


def token_union(contexts) -> int:
    return len({c[:j] for c in contexts for j in range(1, len(c) + 1)})


class Model:
    def __init__(self, bs: int):
        self.bs = bs
        self.ctx: dict[str, tuple[int, ...]] = {}
        self.active: dict[str, bool] = {}

    def check(self, led: DemandLedger, rng: random.Random) -> None:
        bs = self.bs
        sets = {p: block_set(c, bs) for p, c in self.ctx.items()}
        act = [p for p in self.ctx if self.active[p]]
        demand = union_tokens(sets[p] for p in act)
        assert led.demand_tokens() == demand
        # block granularity over-counts the token-level union by < bs per branch
        tok = token_union([self.ctx[p] for p in act])
        assert tok <= demand <= tok + max(0, len(act) - 1) * (bs - 1)
        if bs == 1:
            assert demand == tok
        holders = Counter(b for s in sets.values() for b in s)
        for p, s in sets.items():
            assert led.context_tokens(p) == len(self.ctx[p])
            assert led.unique_tokens(p) == sum(n for b, n in s.items() if holders[b] == 1)
            assert led.is_active(p) == self.active[p]


def run_random(seed: int, n_ops: int) -> None:
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 3, 4, 5])
    alphabet = rng.choice([2, 3, 50])  # small alphabets make accidental sharing likely
    base = [tuple(rng.randrange(alphabet) for _ in range(rng.randint(0, 14))) for _ in range(3)]
    prefixes = base + [b + tuple(rng.randrange(alphabet) for _ in range(5)) for b in base]
    prefixes.append(())

    def rand_tail(lo: int, hi: int) -> tuple[int, ...]:
        return tuple(rng.randrange(alphabet) for _ in range(rng.randint(lo, hi)))

    led = DemandLedger()
    model = Model(bs)
    next_id = 0
    for _ in range(n_ops):
        ids = list(model.ctx)
        op = rng.random()
        if op < 0.2 or len(ids) < 2:  # new program
            pid = f"p{next_id}"
            next_id += 1
            ctx = rng.choice(prefixes) + rand_tail(0, 10)
            led.set_context(pid, block_keys(ctx, bs))
            model.ctx[pid], model.active[pid] = ctx, True
        elif op < 0.55:  # extend, incrementally
            pid = rng.choice(ids)
            old = model.ctx[pid]
            ctx = old + rand_tail(0, 2 * bs + 1)
            chain = block_keys(ctx, bs, prev=led.chain_of(pid))
            assert chain.keys == block_keys(ctx, bs).keys
            led.set_context(pid, chain)
            model.ctx[pid] = ctx
        elif op < 0.65:  # replace with an unrelated context, or rewrite the earlier prefix
            pid = rng.choice(ids)
            old = model.ctx[pid]
            if rng.random() < 0.5:
                ctx = rng.choice(prefixes) + rand_tail(0, 12)
            else:
                ctx = old[: rng.randint(0, len(old))] + rand_tail(0, 8)
            led.set_context(pid, block_keys(ctx, bs))
            model.ctx[pid] = ctx
        elif op < 0.72:  # share another program's context (GRPO-like duplicate) and branch
            pid, src = rng.sample(ids, 2)
            ctx = model.ctx[src] + rand_tail(0, 3)
            led.set_context(pid, block_keys(ctx, bs, prev=led.chain_of(src)))
            model.ctx[pid] = ctx
        elif op < 0.9:  # pause / resume
            pid = rng.choice(ids)
            flag = not model.active[pid] if rng.random() < 0.8 else model.active[pid]
            led.set_active(pid, flag)
            model.active[pid] = flag
        else:  # terminate
            pid = rng.choice(ids)
            led.remove(pid)
            del model.ctx[pid], model.active[pid]
        model.check(led, rng)
    for pid in list(model.ctx):
        led.remove(pid)
    assert led.demand_tokens() == 0 and led._refs == {}


@pytest.mark.parametrize("seed", range(12))
def test_random_operations_match_brute_force(seed):
    run_random(seed, 600)


# ---------------------------------------------------------------------------------------
# Cost: an update touches only the changed blocks, whatever else the ledger holds


def extend_cost(n_other_programs: int, other_blocks: int) -> int:
    led = DemandLedger()
    system = toks(3 * BS, 10_000)
    for i in range(n_other_programs):
        other = system + toks(other_blocks * BS, 100_000 + i * 10_000_000)
        led.set_context(f"o{i}", block_keys(other, BS))
    mine = system + toks(5 * BS + 2, 7)
    led.set_context("me", block_keys(mine, BS))
    grown = mine + [1] * BS  # one more block: partial replaced by full, new partial
    chain = block_keys(grown, BS, prev=led.chain_of("me"))
    before = led.touched_keys
    led.set_context("me", chain)
    return led.touched_keys - before


def test_update_cost_does_not_grow_with_other_contexts():
    small = extend_cost(10, 1)
    large = extend_cost(10_000, 1)
    long_others = extend_cost(10, 1_000)
    assert small == large == long_others == 3  # drop old partial, add full block, add partial


def test_toggle_and_remove_cost_is_own_blocks():
    for n_others in (10, 2_000):
        led = DemandLedger()
        for i in range(n_others):
            led.set_context(f"o{i}", block_keys(toks(8, 0) + toks(8, 1000 + 100 * i), BS))
        led.set_context("me", block_keys(toks(8, 0) + toks(13, 7), BS))  # 6 blocks
        before = led.touched_keys
        led.set_active("me", False)
        led.set_active("me", True)
        led.remove("me")
        assert led.touched_keys - before == 3 * 6


def test_blockchain_is_hashable_and_compares_in_constant_time():
    a = block_keys(toks(9, 0), BS)
    b = block_keys(toks(9, 0), BS)
    assert a == b and hash(a) == hash(b) and a != block_keys(toks(8, 0), BS)
    assert isinstance(a, BlockChain) and {a, b} == {a}
