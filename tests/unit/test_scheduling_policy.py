"""The scheduling policy on constructed states: exact pauses, marks and resumes.

Unless said otherwise: capacity 1000 tokens, high watermark 900, low 800, half-life 10 s,
contexts disjoint (the footprint is the sum of the contexts), programs named by kind and size.
"""

from __future__ import annotations

import random

import pytest

from thunderagent_sglang.policy.demand import DemandLedger, block_keys
from thunderagent_sglang.policy.footprint import (
    footprint_from_union,
    ledger_footprint,
    weighted_footprint,
)
from thunderagent_sglang.policy.retraction import (
    RunningRequest,
    retraction_order,
    sglang_default_order,
)
from thunderagent_sglang.policy.scheduling import Decision, ProgramView, SchedulerConfig, decide

CFG = SchedulerConfig(capacity_tokens=1000, high_watermark=0.9, low_watermark=0.8,
                      half_life_s=10.0, max_pause_s=300.0, aging_step_s=60.0)


def acting(pid, ctx, tool_s=0.0, **kw):
    return ProgramView(pid, "active", "acting", ctx, tool_seconds=tool_s, **kw)


def reasoning(pid, ctx, **kw):
    return ProgramView(pid, "active", "reasoning", ctx, **kw)


def paused(pid, ctx, waiting=True, paused_s=1.0, **kw):
    return ProgramView(pid, "paused", "acting", ctx, waiting=waiting, paused_seconds=paused_s, **kw)


def new(pid, ctx, **kw):
    return ProgramView(pid, "paused", "reasoning", ctx, waiting=True, is_new=True, **kw)


def run(views, config=CFG, **kw) -> Decision:
    """decide() with disjoint contexts."""
    sizes = {v.program_id: v.context_tokens for v in views}
    return decide(views, config, footprint_from_union(lambda ids: sum(sizes[i] for i in ids)), **kw)


def actions(d: Decision) -> tuple:
    return d.pause, d.mark, d.unmark, d.resume


NOTHING = ((), (), (), ())


# ---- pausing --------------------------------------------------------------------------------


def test_at_or_below_the_high_watermark_nothing_is_paused():
    d = run([acting("a100", 100), reasoning("r800", 800)])  # 900, not above 900
    assert actions(d) == NOTHING
    assert d.footprint_tokens == d.after_tokens == 900.0


def test_pauses_acting_programs_smallest_first_just_enough_to_reach_the_high_watermark():
    views = [acting("a300", 300), acting("a100", 100), acting("a200", 200), reasoning("r400", 400)]
    assert run(views).pause == ("a100",)  # 1000 -> 900
    views.append(reasoning("r250", 250))  # 1250: a100, a200 -> 950, still above; a300 -> 650
    d = run(views)
    assert actions(d) == (("a100", "a200", "a300"), (), (), ())
    assert d.after_tokens == 650.0
    assert d.reasons["a100"] == "paused: acting; footprint 1250 > high 900"


def test_reasoning_programs_are_marked_never_paused_and_only_after_every_acting_one():
    views = [reasoning("r500", 500), reasoning("r450", 450), acting("a50", 50, priority=9)]
    d = run(views)  # 1000; a50 -> 950 still above; then the smallest reasoning one
    assert actions(d) == (("a50",), ("r450",), (), ())
    assert d.reasons["r450"].startswith("marked: reasoning, pause at its tool boundary")


def test_priority_orders_pauses_within_a_class():
    views = [acting("a100", 100, priority=5), acting("a300", 300), reasoning("r600", 600)]
    assert run(views).pause == ("a300",)  # lower priority goes first, though larger


def test_a_marked_program_counts_as_gone_so_nothing_more_is_paused():
    views = [reasoning("r500", 500, marked=True), reasoning("r450", 450), acting("a100", 100)]
    d = run(views)  # 1050 counted, 550 without the marked one
    assert actions(d) == NOTHING


def test_a_marked_program_is_paused_at_its_tool_boundary():
    views = [acting("m500", 500, marked=True), reasoning("r450", 450)]
    d = run(views)
    assert actions(d) == (("m500",), (), (), ())
    assert d.reasons["m500"] == "paused: marked, reached its tool boundary"


def test_marks_are_kept_between_the_watermarks_and_cleared_below_the_low_one():
    kept = run([reasoning("m500", 500, marked=True), reasoning("r350", 350)])  # 850
    assert actions(kept) == NOTHING
    cleared = run([reasoning("m500", 500, marked=True), acting("n200", 200, marked=True),
                   reasoning("r50", 50)])  # 750 < 800
    assert actions(cleared) == ((), (), ("m500", "n200"), ())


def test_untagged_tokens_and_decode_headroom_count_toward_the_footprint():
    views = [acting("a200", 200), reasoning("r300", 300)]
    assert run(views, untagged_tokens=450).pause == ("a200",)  # 950
    d = run([reasoning("r800", 800, decode_headroom=150)])
    assert d.footprint_tokens == 950.0 and d.mark == ("r800",)


# ---- resuming -------------------------------------------------------------------------------


def test_resumes_waiting_programs_first_smallest_first_strictly_in_order():
    views = [reasoning("r400", 400), paused("idle50", 50, waiting=False),
             paused("w300", 300), paused("w100", 100), paused("w200", 200)]
    d = run(views)  # 400 +100 +200 = 700 < 800; +300 = 1000 stops the queue
    assert actions(d) == ((), (), (), ("w100", "w200"))
    # idle50 would fit but is behind w300, which does not
    assert d.reasons["w300"] == "held: no room below low 800"
    assert d.after_tokens == 700.0


def test_the_attained_order_resumes_the_least_served_program_first():
    views = [reasoning("r400", 400), paused("w100", 100, attained_s=9.0),
             paused("w300", 300, attained_s=1.0), paused("w200", 200, attained_s=4.0)]
    assert run(views).resume == ("w100", "w200")  # smallest: 100 + 200 fit below 800
    attained = SchedulerConfig(**{**CFG.__dict__, "resume_order": "attained"})
    d = run(views, attained)  # w300 (1 s) first, then w200 (4 s) no longer fits
    assert d.resume == ("w300",)
    assert d.reasons["w200"] == "held: no room below low 800"
    with pytest.raises(ValueError, match="resume_order must be one of"):
        SchedulerConfig(capacity_tokens=1000, resume_order="fifo")


def test_paused_programs_without_a_request_resume_after_waiting_ones():
    d = run([reasoning("r100", 100), paused("idle50", 50, waiting=False), paused("w300", 300)])
    assert d.resume == ("w300", "idle50")


def test_a_paused_program_is_resumed_only_if_its_whole_context_fits_decay_or_not():
    # idle600 has decayed to 600 / 64 = 9.4 tokens, but resumed its next request would run
    # unheld at 600: 300 + 600 is not below 800
    views = [reasoning("r300", 300), paused("idle600", 600, waiting=False, tool_seconds=60.0)]
    assert run(views).resume == ()
    views = [reasoning("r100", 100), paused("idle600", 600, waiting=False, tool_seconds=60.0)]
    assert run(views).resume == ("idle600",)


def test_priority_orders_resumes_within_a_class():
    views = [reasoning("r400", 400), paused("w100", 100), paused("w300", 300, priority=1)]
    assert run(views).resume == ("w300",)  # 700; w100 would reach 800, not below it


def test_waiting_time_raises_priority_one_level_per_aging_step():
    views = [reasoning("r400", 400), paused("w100", 100, paused_s=10.0),
             paused("w300", 300, paused_s=130.0)]  # levels 0 and 2
    assert run(views).resume == ("w300",)
    views = [reasoning("r400", 400), paused("w100", 100, paused_s=100.0),
             paused("w300", 300, paused_s=70.0)]  # both level 1: smallest first
    assert run(views).resume == ("w100",)  # 500; w300 would reach 800


def test_new_programs_do_not_overtake_paused_ones():
    views = [reasoning("r400", 400), new("n50", 50), paused("p450", 450)]
    d = run(views)  # p450 would reach 850; n50 fits but waits behind it
    assert actions(d) == NOTHING
    assert d.reasons["n50"] == "held: no room below low 800"
    views = [reasoning("r400", 400), new("n50", 50), paused("p300", 300)]
    assert run(views).resume == ("p300", "n50")


def test_a_new_program_is_admitted_while_the_footprint_stays_below_the_low_watermark():
    assert run([reasoning("r100", 100), new("n200", 200)]).resume == ("n200",)
    assert run([reasoning("r700", 700), new("n200", 200)]).resume == ()


def test_an_idle_engine_backfills_the_first_waiting_program_that_fits_under_high():
    # Nothing reasoning: a300 + a400 = 700; the head p250 would reach 950 > high 900, n150
    # reaches 850 (above low 800, at most high): it overtakes the head; idle50 has no request
    views = [acting("a300", 300), acting("a400", 400), paused("p250", 250),
             paused("idle50", 50, waiting=False), new("n150", 150)]
    d = run(views)
    assert actions(d) == ((), (), (), ("n150",))
    assert d.reasons["n150"] == "resumed: engine idle, footprint stays at or below high 900"
    assert d.reasons["p250"] == "held: no room below low 800"
    assert d.after_tokens == 850.0


def test_no_backfill_while_the_engine_has_work():
    views = [acting("a300", 300), reasoning("r400", 400), paused("p250", 250), new("n150", 150)]
    assert actions(run(views)) == NOTHING
    views = [acting("a300", 300), acting("a400", 400), paused("p250", 250), new("n150", 150)]
    assert actions(run(views, untagged_tokens=10)) == NOTHING  # an untagged call runs


def test_backfill_never_goes_above_high_and_can_be_turned_off():
    views = [acting("a300", 300), acting("a400", 400), paused("p250", 250), new("n210", 210)]
    assert actions(run(views)) == NOTHING  # 910 > 900
    views = [acting("a300", 300), acting("a400", 400), new("n150", 150)]
    off = SchedulerConfig(1000, 0.9, 0.8, half_life_s=10.0, backfill=False)
    assert actions(run(views, off)) == NOTHING


# ---- hysteresis -----------------------------------------------------------------------------


def apply(views: list[ProgramView], d: Decision) -> list[ProgramView]:
    """The engine's side, simplified: paused programs keep their request, resumed ones run."""
    out = []
    for v in views:
        if v.program_id in d.pause:
            v = paused(v.program_id, v.context_tokens, waiting=False, paused_s=0.0)
        elif v.program_id in d.resume:
            v = reasoning(v.program_id, v.context_tokens) if v.waiting else \
                acting(v.program_id, v.context_tokens)
        out.append(v)
    return out


def test_no_flapping_while_the_footprint_oscillates_between_the_watermarks():
    decisions = []
    for size in (500, 590, 520, 599, 505, 560):  # 800..899 with a300
        views = [acting("a300", 300), reasoning("r", size), paused("w150", 150)]
        decisions.append(actions(run(views)))
    assert decisions == [NOTHING] * 6


def test_a_sequence_pauses_above_high_and_resumes_only_below_low():
    # Decay off, so that only the contexts move. b grows, shrinks between the watermarks,
    # then shrinks below the low one.
    cfg = SchedulerConfig(1000, 0.9, 0.8, decay=False)
    views = [acting("a150", 150), reasoning("b", 700)]  # 850
    log = []
    for size in (700, 760, 720, 700, 660, 640, 700, 740):
        views = [v if v.program_id != "b" else reasoning("b", size) for v in views]
        d = run(views, cfg)
        log.append(actions(d))
        views = apply(views, d)
    assert log == [
        NOTHING,                       # 850
        (("a150",), (), (), ()),       # 910 > 900: pause
        NOTHING,                       # 720 alone; +150 = 870, not below 800
        NOTHING,                       # 850 with it: still no
        NOTHING,                       # 810
        ((), (), (), ("a150",)),       # 790 < 800: resume
        NOTHING,                       # 850: between, kept
        NOTHING,                       # 890: between, kept
    ]


# ---- decay and shared prefixes -------------------------------------------------------------


def test_decay_lets_a_long_idle_acting_program_stop_blocking():
    fresh = [acting("a800", 800, tool_s=0.0), reasoning("r150", 150), paused("w200", 200)]
    # 950: it blocks, so it pauses, and the room it leaves goes to w200 (150 + 200 < 800)
    assert actions(run(fresh)) == (("a800",), (), (), ("w200",))
    idle = [acting("a800", 800, tool_s=10.0), reasoning("r150", 150), paused("w200", 200)]
    d = run(idle)  # 400 + 150 = 550; + 200 = 750 < 800
    assert actions(d) == ((), (), (), ("w200",))
    assert d.footprint_tokens == 550.0 and d.after_tokens == 750.0
    no_decay = SchedulerConfig(1000, 0.9, 0.8, decay=False)
    assert actions(run(idle, no_decay)) == (("a800",), (), (), ("w200",))


def tokens(n: int, base: int) -> list[int]:
    return list(range(base, base + n))


def ledger_of(contexts: dict[str, list[int]], block_size: int = 1) -> DemandLedger:
    ledger = DemandLedger()
    for pid, toks in contexts.items():
        ledger.set_context(pid, block_keys(toks, block_size))
    return ledger


def test_a_shared_system_prompt_counts_once_with_a_real_ledger():
    system = tokens(300, 0)
    ledger = ledger_of({p: system + tokens(200, 1000 * (i + 1)) for i, p in enumerate("abc")})
    views = [reasoning("a", 500), reasoning("b", 500), acting("c", 500)]
    d = decide(views, CFG, ledger_footprint(ledger))
    assert d.footprint_tokens == 900.0  # 300 + 3 * 200, not 1500
    assert actions(d) == NOTHING


def test_a_shared_prefix_counts_at_its_most_needed_holders_weight():
    system = tokens(400, 0)
    ledger = ledger_of({"r": system + tokens(100, 1000), "a": system + tokens(100, 2000),
                        "b": system + tokens(100, 3000)})
    fp = ledger_footprint(ledger)
    # reasoning r needs the prefix in full; a's own 100 tokens count half
    assert weighted_footprint({"r": 1.0, "a": 0.5}, fp) == 550.0
    # acting only: the prefix counts once, at a's 0.5, not 0.5 + 0.25
    assert weighted_footprint({"a": 0.5, "b": 0.25}, fp) == 0.5 * 500 + 0.25 * 100
    views = [acting("a", 500, tool_s=10.0), acting("b", 500, tool_s=20.0)]
    assert decide(views, CFG, fp).footprint_tokens == 275.0


def union_tokens(ledger, program_ids) -> int:
    """The oracle: the union of the programs' blocks, each counted once."""
    blocks = {}
    for pid in program_ids:
        chain = ledger.chain_of(pid)
        for i in range(len(chain)):
            blocks[chain.key(i)] = chain.length(i)
    return sum(blocks.values())


def test_ledger_footprint_equals_demand_tokens_of_every_prefix():
    rng = random.Random(5)
    ledger = DemandLedger()
    contexts: dict[str, list[int]] = {}
    for i in range(30):
        if contexts and rng.random() < 0.7:  # fork: a prefix of another context, then new tokens
            parent = contexts[rng.choice(list(contexts))]
            cut = rng.randrange(len(parent) + 1)
            toks = parent[:cut] + tokens(rng.randrange(0, 20), 10_000 * i)
        else:
            toks = tokens(rng.randrange(1, 40), 10_000 * i)
        contexts[f"p{i}"] = toks
        ledger.set_context(f"p{i}", block_keys(toks, 4))
    contexts["twin"] = list(contexts["p3"])  # identical context, partial tail shared
    ledger.set_context("twin", block_keys(contexts["twin"], 4))
    fp = ledger_footprint(ledger)
    for _ in range(20):
        order = rng.sample(list(contexts), rng.randrange(1, len(contexts)))
        expected = [union_tokens(ledger, order[: k + 1]) for k in range(len(order))]
        assert list(fp(order)) == expected
    with pytest.raises(KeyError, match="not in the demand ledger"):
        fp(["nobody"])


# ---- starvation and oversized programs ------------------------------------------------------


def test_max_pause_force_resumes_over_the_watermark_and_is_not_repaused_at_once():
    views = [acting("a200", 200), reasoning("r700", 700), paused("w300", 300, paused_s=301.0),
             paused("idle10", 10, waiting=False, paused_s=10_000.0)]
    d = run(views)  # 900 + 300 forced = 1200: a200 paused, r700 marked; w300, though smallest, kept
    assert actions(d) == (("a200",), ("r700",), (), ("w300",))
    assert d.reasons["w300"] == "force-resumed: paused 301s > max pause"
    assert "idle10" not in d.resume  # nothing waiting: nothing to force


def test_a_program_too_large_to_ever_fit_runs_alone():
    assert run([paused("big", 1500)]).resume == ("big",)
    d = run([reasoning("r100", 100), paused("big", 1500, priority=1), paused("w200", 200)])
    assert d.resume == ("w200",)  # big is skipped (it never fits), not a wall for the queue
    assert d.reasons["big"] == "held: never fits below low; runs alone or after max pause"


def test_an_oversized_program_runs_alone_once_no_tagged_call_is_in_the_engine():
    # big (1500 > the 800-token low watermark) never fits beside a100 and a50, who are acting
    d = run([acting("a100", 100), acting("a50", 50), new("big", 1500)])
    assert actions(d) == (("a100", "a50"), (), (), ("big",))
    assert d.reasons["big"] == "resumed alone: never fits below low; no tagged call running"
    assert d.reasons["a50"] == "paused: big runs alone"
    # while another program's call is in the engine, big waits (held, not resumed)
    d = run([reasoning("r100", 100), acting("a50", 50), new("big", 1500)])
    assert actions(d) == NOTHING
    assert d.reasons["big"] == "held: never fits below low; runs alone or after max pause"
    # a head that fits is not run alone: it waits for room as before
    assert actions(run([acting("a700", 700), new("w300", 300)])) == NOTHING


def test_an_oversized_program_alone_is_paused_once_per_tool_phase_not_per_tick():
    d = run([acting("big", 1500)])
    assert actions(d) == (("big",), (), (), ())
    assert actions(run([paused("big", 1500, waiting=False)])) == NOTHING  # tool still running
    d = run([paused("big", 1500)])  # its next request arrived
    assert d.resume == ("big",)
    assert d.reasons["big"] == "resumed alone: no tagged program is running"


def test_untagged_load_alone_never_starves_tagged_programs():
    # untagged requests are never held; with nothing tagged running, one program still runs
    d = run([paused("w100", 100), paused("w50", 50)], untagged_tokens=950)
    assert d.resume == ("w50",)
    assert d.reasons["w100"] == "held: no room below low 800"


# ---- inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    (dict(low_watermark=0.95, high_watermark=0.9), "0 < low <= high"),
    (dict(capacity_tokens=0), "capacity_tokens must be positive"),
    (dict(max_pause_s=0), "max_pause_s must be a positive number"),
])
def test_bad_config_says_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SchedulerConfig(**{"capacity_tokens": 1000, **kwargs})


def test_bad_views_are_refused():
    with pytest.raises(ValueError, match="a new program is paused with a request waiting"):
        ProgramView("n", "active", "reasoning", 10, is_new=True)
    with pytest.raises(ValueError, match="only an active program can be marked"):
        ProgramView("p", "paused", "acting", 10, marked=True)
    with pytest.raises(ValueError, match="only once"):
        run([acting("a", 1), acting("a", 2)])


# ---- decode retraction ----------------------------------------------------------------------


def test_untagged_requests_alone_keep_sglangs_order():
    reqs = [RunningRequest(None, 100, 5), RunningRequest(None, 300, 5),
            RunningRequest(None, 50, 1), RunningRequest(None, 300, 5)]
    # fewest outputs first, then longest input, then the later one (SGLang pops from the end)
    assert sglang_default_order(reqs) == [2, 3, 1, 0]
    assert retraction_order(reqs, []) == [2, 3, 1, 0]


def test_retraction_takes_marked_programs_then_untagged_then_smallest_program():
    views = [reasoning("big", 900), reasoning("small", 200), reasoning("m", 5000, marked=True),
             reasoning("vip", 100, priority=1)]
    reqs = [RunningRequest("big", 900, 10), RunningRequest("small", 150, 40),
            RunningRequest(None, 60, 3), RunningRequest("m", 5000, 1),
            RunningRequest("small", 200, 2), RunningRequest("vip", 100, 1),
            RunningRequest("unknown", 10, 0)]
    # m (marked); untagged and unknown in SGLang's order; small (both requests, SGLang's
    # order between them); big; vip last (higher priority)
    assert retraction_order(reqs, views) == [3, 6, 2, 4, 1, 0, 5]
