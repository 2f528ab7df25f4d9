"""The simulator's engine model on constructed cases: exact cache hits, evictions and step
counts; our policy through the engine's own decide(); determinism."""

from __future__ import annotations

import pytest

from benchmarks.agentic.workload import Call, Program
from sim.__main__ import simulate
from sim.cache import BlockCache
from sim.costs import StepCost
from sim.engine import Engine
from sim.policies import Plain, Thunder

UNIT = StepCost(base_s=1.0, prefill_token_s=0.0, prefill_attend_s=0.0, decode_seq_s=0.0,
                decode_context_s=0.0)  # every step takes one second


def lru_cache(capacity: int) -> BlockCache:
    return BlockCache(capacity, lambda block: (block.last_used,))


def test_a_prefix_matches_block_by_block_and_eviction_takes_leaves_lru_first():
    cache = lru_cache(4)
    assert cache.insert([1, 2, 3], now=0.0, program="a") == 3
    assert cache.insert([1, 2, 9], now=1.0, program="b") == 1  # shares two blocks
    assert (cache.match([1, 2, 3, 4]), cache.match([1, 9]), cache.match([7])) == (3, 1, 0)
    assert (cache.blocks[2].children, cache.blocks[1].owners) == (2, {"a", "b"})
    assert cache.evict(1) == 1 and 3 not in cache.blocks  # the older leaf
    cache.lock([1, 2, 9], 1)
    assert cache.evict(5) == 0  # everything left is locked or has a child
    cache.lock([1, 2, 9], -1)
    assert cache.evict(5) == 3 and cache.blocks == {}  # 9, then 2 and 1 become leaves
    assert cache.evicted == 4


def test_inserting_past_capacity_is_refused():
    cache = lru_cache(2)
    with pytest.raises(RuntimeError, match="over capacity"):
        cache.insert([1, 2, 3], now=0.0, program=None)


def two_turns(pid: str, first: int, gap: float, base: int = 100) -> Program:
    head = tuple(range(base, base + first))
    return Program(pid, (Call(head, 2, 0.0), Call(tuple(range(5000, 5008)), 2, gap)))


def test_one_program_exact_steps_hits_and_times():
    """Block 4: turn 1 prompts 16 tokens (4 blocks, all computed), decodes 2 steps; its 18
    tokens of prompt and output enter the cache (5 blocks, the last partial); after a 10 s
    tool, turn 2's prompt (26 tokens) finds its 4 full leading blocks cached (16 tokens)."""
    engine = Engine(Plain(), capacity_tokens=64, block=4, cost=UNIT, slots=1,
                    source=lambda slot, index: two_turns("p", 16, 10.0) if index == 0 else None)
    stats = engine.run(until=100.0)
    assert stats.finished == [2.0, 14.0]  # 2 steps; tool to 12.0; 2 steps
    assert (stats.cached_tokens, stats.computed_tokens, stats.steps) == (16, 16 + 10, 4)
    assert engine.cache.used == 4 + 1 + 2 + 1  # turn 1's blocks, then turn 2's new ones


def test_a_full_pool_makes_a_call_wait_and_evicts_the_least_recently_used_first():
    """Two programs with heads of their own (16 tokens, 4 blocks of 4) in a pool of 8 blocks.
    p0 is admitted and reserves 5 blocks (prompt and output): p1 waits 2 steps, then evicts
    p0's 2 last blocks. p1's second call (26 tokens) finds its own 4 blocks and evicts p0's 3
    older ones; p0's second call finds nothing and evicts 7 of p1's."""
    def source(slot, index):
        if index:
            return None
        return two_turns(f"p{slot}", 16, 5.0 if slot == 0 else 1.0, base=100 + 1000 * slot)

    engine = Engine(Plain(), capacity_tokens=32, block=4, cost=UNIT, slots=2, source=source)
    stats = engine.run(until=100.0)
    assert stats.finished == [2.0, 4.0, 7.0, 9.0]
    assert (stats.cached_tokens, stats.computed_tokens) == (16, 16 + 16 + 10 + 26)
    assert (engine.cache.evicted, stats.held_s, stats.steps) == (2 + 3 + 7, 2.0, 8)


def test_a_host_tier_keeps_what_the_device_evicted_and_loads_it_back_at_its_cost():
    """The case above with a 16-block host tier and loads at 0.25 s a token: the 12 blocks
    the device evicts are written to the host; p0's second call, which found nothing without
    it, finds its 4 head blocks there (16 tokens loaded, not computed), and the load's 4 s
    moves its finish from 9.0 to 13.0."""
    def source(slot, index):
        if index:
            return None
        return two_turns(f"p{slot}", 16, 5.0 if slot == 0 else 1.0, base=100 + 1000 * slot)

    engine = Engine(Plain(), capacity_tokens=32, block=4, cost=UNIT, slots=2, source=source,
                    host_tokens=64, host_load_token_s=0.25)
    stats = engine.run(until=100.0)
    assert stats.finished == [2.0, 4.0, 7.0, 13.0]
    assert (stats.cached_tokens, stats.computed_tokens, stats.host_loaded_tokens) == \
        (16 + 16, 16 + 16 + 10 + 10, 16)
    assert (engine.host.written, engine.host.loaded, engine.host.evicted) == (12, 4, 0)


def test_a_prefill_step_runs_alone_unless_mixed():
    """p0: one call (16-token prompt, 4 tokens out); p1: a 1-token call, a 1 s tool, another
    1-token call. Step 1 prefills both (both emit), p1's first call ends; step 2 decodes p0;
    at 2.0 p1's second call arrives. Not mixed (SGLang's default), step 3 prefills it alone and
    p0 waits, finishing after step 5; mixed, p0 decodes in step 3 too and ends after step 4."""
    def source(slot, index):
        if index:
            return None
        head = tuple(range(100 + 1000 * slot, 116 + 1000 * slot))
        if slot == 0:
            return Program("p0", (Call(head, 4, 0.0),))
        return Program("p1", (Call(head, 1, 0.0), Call(tuple(range(5000, 5008)), 1, 1.0)))

    expected = {False: ([1.0, 3.0, 5.0], 5), True: ([1.0, 3.0, 4.0], 4)}
    for mixed, (finished, steps) in expected.items():
        engine = Engine(Plain(), capacity_tokens=64, block=4, cost=UNIT, slots=2,
                        source=source, mixed=mixed)
        stats = engine.run(until=100.0)
        assert (stats.finished, stats.steps) == (finished, steps)


def test_ours_pauses_programs_by_the_engines_decide_when_the_pool_is_short():
    small = simulate("ours", slots=16, minutes=3, seed=1, capacity=8192, block=256)
    assert small["pauses"] > 0 and small["calls_per_min"] > 0


def test_the_same_seed_gives_the_same_figures():
    runs = [simulate(system, slots=8, minutes=2, seed=3, capacity=8192, block=256)
            for system in ("plain", "ours", "plain", "ours")]
    for a, b in ((runs[0], runs[2]), (runs[1], runs[3])):
        assert {k: v for k, v in a.items() if k != "wall_s"} == \
               {k: v for k, v in b.items() if k != "wall_s"}


def test_a_held_program_gets_its_call_back_in_order():
    policy = Thunder()
    engine = Engine(policy, capacity_tokens=8192, block=256, slots=4, seed=2)
    stats = engine.run(until=120.0)
    assert stats.finished == sorted(stats.finished) and len(stats.finished) > 10
    assert all(not p.held or p.status == "paused" for p in policy.programs.values())


def test_the_batch1_fit_recovers_known_costs_exactly(tmp_path):
    """A calibration made by the model itself (cold and cached calls at five sizes) gives back
    the model's own coefficients."""
    import json

    from sim import fit

    truth = dict(token=0.0009, attend=0.00008, step=0.004, context=0.0003)

    def seconds(prompt, cached, out):
        x = fit._features(prompt, cached, out, attend_whole=True)
        return (truth["token"] * x[0] + truth["attend"] * x[1] + truth["step"] * x[2]
                + truth["context"] * x[3])

    rows = []
    for p in (512, 1024, 2048, 4096, 8192):
        rows.append({"prompt_tokens": p, "output_tokens": 16, "cached_tokens": [p + 16],
                     "cold_median_s": seconds(p, 0, 16),
                     "cached_median_s": seconds(p + 20, p + 16, 16)})
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"measurements": rows}))
    cost, step, info = fit.fit_single(fit.calibration_rows(path))
    assert (cost.prefill_token_s, cost.prefill_attend_s, step, cost.decode_context_s) == \
        pytest.approx((truth["token"], truth["attend"], truth["step"], truth["context"]),
                      rel=1e-6)
    assert max(abs(r) for r in info["residual_s"]) < 1e-9
    half = fit.split(cost, step, 0.3)
    assert (half.base_s, half.decode_seq_s) == pytest.approx((0.3 * step, 0.7 * step))


def test_the_split_is_the_one_closest_to_the_measured_run():
    from sim import fit

    cost = StepCost()
    chosen, tried = fit.fit_split(cost, 0.01, 40.0,
                                  lambda c: 100.0 - 200.0 * c.base_s / 0.01 * 0.3)
    assert [t["fraction"] for t in tried] == list(fit.SPLITS)
    assert chosen.base_s == pytest.approx(0.01)  # 100 - 60 = 40 at fraction 1.0


def test_the_load_factor_is_the_scheduler_busy_time_over_the_batch1_model():
    """Two calls in the window [30, 90) and one outside it; the model's batch-1 seconds of the
    two are known, the point's run_batch is three times theirs: every cost scales by 3."""
    from sim import fit

    cost = StepCost(base_s=0.0, prefill_token_s=0.001, prefill_attend_s=0.0, decode_seq_s=0.0,
                    decode_context_s=0.0, attend_whole=True)
    calls = [["a", 0, 0.0, 20.0, 900, 0, 4],  # finished before the window
             ["a", 1, 25.0, 31.0, 1000, 400, 4],  # 600 new: 0.6 s + 4 steps of 0.01
             ["b", 0, 40.0, 89.0, 500, 0, 2]]  # 0.5 s + 2 steps
    point = {"calls": calls, "server_metrics": {
        'sglang:scheduler_stage_seconds_total{category="run_batch"}': 3 * (0.64 + 0.52)}}
    loaded = fit.load_factor(cost, 0.01, point, 30.0, 90.0)
    assert loaded["calls"] == 2 and loaded["batch1_model_s"] == pytest.approx(1.16)
    assert loaded["factor"] == pytest.approx(3.0)
    assert fit.scaled(cost, 3.0).prefill_token_s == pytest.approx(0.003)


def one_call(pid: str, out: int = 2):
    return lambda slot, index: None if index else Program(pid, (Call(tuple(range(100, 116)), out,
                                                                       0.0),))


def test_the_proxy_rule_decides_on_its_tick_only_ours_at_the_arrival():
    """A new program's first call: ours admits it at its arrival (a decision there); the
    proxy's rule holds it to its first 5 s tick."""
    from sim.policies import Proxy

    finished = {}
    for policy in (Thunder(), Proxy(tick_s=5.0)):
        engine = Engine(policy, capacity_tokens=64, block=4, cost=UNIT, slots=1,
                        source=one_call("p"))
        finished[policy.name] = engine.run(until=100.0).finished
    assert finished == {"ours": [2.0], "proxy": [7.0]}


def test_the_proxy_counts_every_program_alone_scaled_by_its_estimate():
    from types import SimpleNamespace

    from sim.policies import Proxy
    from thunderagent_sglang.policy.demand import block_keys

    policy = Proxy(estimate=1.5)
    policy.attach(SimpleNamespace(block=4, cache=SimpleNamespace(capacity=16)))
    shared = list(range(100, 116))
    for pid, tail in (("a", [1, 2, 3, 4]), ("b", [5, 6, 7, 8])):
        policy.ledger.set_context(pid, block_keys(shared + tail, 4))
    assert list(policy._footprint()(["a", "b"])) == [30, 60]  # 20 tokens each, x1.5, no sharing
    assert list(Thunder._footprint(policy)(["a", "b"])) == [20, 24]  # ours: the prefix once
    assert policy.config.decay is False


def test_ttl_pins_a_finished_programs_blocks_after_every_unpinned_one_until_it_expires():
    from types import SimpleNamespace

    from sim.policies import Ttl

    policy = Ttl(ttl_s=10.0)
    policy.finished(SimpleNamespace(program_id="p"), 0.0)
    block = SimpleNamespace(owners={"p"}, last_used=0.0)
    other = SimpleNamespace(owners={"q"}, last_used=9.0)
    assert policy.rank(other, 5.0) < policy.rank(block, 5.0)  # pinned: evicted after q's
    assert policy.rank(block, 11.0) < policy.rank(other, 11.0)  # expired: LRU again
    policy.ended("p", 12.0)
    assert policy.pinned_until == {}


def test_eviction_only_never_holds_and_ranks_acting_programs_below_reasoning_ones():
    from types import SimpleNamespace

    from sim.policies import EvictionOnly

    policy = EvictionOnly()
    engine = Engine(policy, capacity_tokens=4096, block=16, slots=8, seed=2)
    stats = engine.run(until=60.0)
    assert policy.pauses == 0 and len(stats.finished) > 8
    assert not any(p.held for p in policy.programs.values())
    acting = [pid for pid, p in policy.programs.items() if p.phase == "acting"]
    reasoning = [pid for pid, p in policy.programs.items() if p.phase == "reasoning"]
    assert acting and reasoning
    rank = lambda pid: policy.rank(SimpleNamespace(owners={pid}, last_used=0.0), engine.now)  # noqa: E731
    assert max(rank(pid) for pid in acting) < min(rank(pid) for pid in reasoning)


def test_the_committed_validation_table_is_what_its_committed_command_makes():
    """``python -m sim validate`` on the committed calibration and runs gives back the
    committed ``validation.json`` exactly (seeded, deterministic; rerun it after changing the
    simulator)."""
    import json
    from pathlib import Path

    from sim.validate import validate

    table = validate(Path("benchmarks/results/sim/calibration.json"),
                     Path("benchmarks/results/agentic/sweep-serve/points"),
                     rollout_points=Path("benchmarks/results/agentic/quick-rollout/points"))
    committed = json.loads(Path("benchmarks/results/sim/validation.json").read_text())
    assert json.loads(json.dumps(table)) == committed
    assert committed["rollout"]["ours/plain"]["measured"] == 1.913


def test_a_paused_programs_own_kv_is_offloaded_or_dropped_by_the_engines_cost_model():
    """With a host tier, pausing a program runs ``policy.offload.decide`` on the blocks it
    holds alone: loads that cost nothing offload them (to the host, off the device); loads
    dearer than recompute drop them from both tiers; the prefix it shares stays."""
    from sim.policies import _Program
    from thunderagent_sglang.policy.demand import block_keys

    def paused(load_token_s: float) -> Engine:
        engine = Engine(Thunder(decay="on"), capacity_tokens=64, block=4, cost=UNIT, slots=0,
                        host_tokens=64, host_load_token_s=load_token_s)
        policy = engine.policy
        for pid in ("a", "b"):
            policy.programs[pid] = _Program(status="active")
            policy.ledger.set_context(pid, block_keys(tuple(range(12)), 4))
        engine.cache.insert([1, 2, 3], 0.0, "a")
        engine.cache.insert([1, 2, 9], 0.0, "b")
        engine.host.write(engine.cache.blocks[3])
        policy._pause("a", 1.0)
        return engine

    offloaded = paused(0.0)  # a load of 5 us against 4 tokens' recompute (1 ms)
    assert (sorted(offloaded.cache.blocks), sorted(offloaded.host.blocks)) == ([1, 2, 9], [3])
    assert offloaded.policy.kv_decisions == {"keep": 0, "offload": 1, "drop": 0}
    dropped = paused(1.0)  # 4 s to load 4 tokens: recompute is cheaper
    assert (sorted(dropped.cache.blocks), sorted(dropped.host.blocks)) == ([1, 2, 9], [])
    assert dropped.policy.kv_decisions == {"keep": 0, "offload": 0, "drop": 1}
