"""The router's pure policy: placement of new and untagged calls, moves of waiting programs,
prefix affinity, and its flags."""

from __future__ import annotations

import pytest

from thunderagent_sglang.policy.affinity import PrefixAffinity, prefix_keys
from thunderagent_sglang.policy.placement import (
    Move,
    ReplicaLoad,
    Waiting,
    place_new,
    place_untagged,
    plan_moves,
)
from thunderagent_sglang.router.settings import SettingsError, backends, from_args


def load(name, footprint, low=1000, capacity=1000, **kw):
    return ReplicaLoad(name=name, ready=kw.pop("ready", True), capacity_tokens=capacity,
                       high_tokens=low + 50, low_tokens=low, footprint_tokens=footprint, **kw)


def test_a_new_program_goes_to_the_replica_with_the_most_free_demand_capacity():
    loads = [load("a", 600), load("b", 200, waiting_tokens=300), load("c", 450)]
    assert [r.free_tokens for r in loads] == [400, 500, 550]
    assert place_new(loads, {}) == "c"
    assert place_new([load("a", 100, pending_tokens=500), load("b", 300)], {}) == "b"


def test_within_a_tie_the_longest_prefix_then_the_fewest_calls_win():
    loads = [load("a", 300, calls=5), load("b", 310, calls=1), load("c", 700)]
    assert place_new(loads, {}) == "b"  # a tie within 1/32 of the pool: fewer calls
    assert place_new(loads, {"a": 3, "b": 2, "c": 9}) == "a"  # c holds more but is full
    assert place_new([load("a", 0, ready=False), load("b", 999)], {}) == "b"
    assert place_new([load("a", 0, ready=False)], {}) is None


def test_untagged_calls_follow_the_cache_unless_that_replica_is_much_busier():
    loads = [load("a", 900, calls=2), load("b", 0, calls=0)]
    assert place_untagged(loads, {"a": 6}, 10) == "a"  # at least half seen there
    assert place_untagged(loads, {"a": 4}, 10) == "b"  # less than half: least busy
    busy = [load("a", 900, calls=5), load("b", 0, calls=0)]
    assert place_untagged(busy, {"a": 10}, 10) == "b"  # more than 4 calls busier
    assert place_untagged([load("a", 0, calls=1), load("b", 500, calls=1)], {}, 0) == "a"


def waiting(pid, replica, context, reusable=0, waited=10.0, priority=0, may_move=True):
    return Waiting(pid, replica, context, reusable, waited, priority, may_move)


def test_a_waiting_program_moves_to_a_replica_with_room_when_re_prefill_is_cheaper():
    loads = [load("a", 900, waiting_tokens=300, prefill_tokens_per_s=100.0),
             load("b", 200, prefill_tokens_per_s=100.0)]  # a's queue holds the program
    moves = plan_moves(loads, [waiting("p", "a", 300, reusable=100, waited=2.5)], 300)
    assert moves == [Move("p", "a", "b", stay_s=2.5 + 2.0, move_s=3.0)]
    # it just started waiting and its KV is all there: staying is cheaper
    assert plan_moves(loads, [waiting("p", "a", 300, reusable=300, waited=2.5)], 300) == []


def test_with_a_shared_kv_storage_tier_a_move_costs_loading_not_recomputing():
    loads = [load("a", 900, waiting_tokens=300, prefill_tokens_per_s=100.0),
             load("b", 200, prefill_tokens_per_s=100.0)]
    # all of it still on its replica: recomputing 300 elsewhere (3 s) beats no wait of 2.5 s,
    # but loading it from storage (300 / 1000 = 0.3 s) does
    stays = [waiting("p", "a", 300, reusable=300, waited=2.5)]
    assert plan_moves(loads, stays, 300) == []
    assert plan_moves(loads, stays, 300, storage_tokens_per_s=1000.0) == [
        Move("p", "a", "b", stay_s=2.5, move_s=0.3)]
    # just started waiting: loading its 300 tokens there (0.3 s) costs more than 0.1 s + 0
    assert plan_moves(loads, [waiting("p", "a", 300, reusable=300, waited=0.1)], 300,
                      storage_tokens_per_s=1000.0) == []
    # what its replica lost is loaded at home too: 0.05 + 200 / 1000 = 0.25 s < 0.3 s
    assert plan_moves(loads, [waiting("p", "a", 300, reusable=100, waited=0.05)], 300,
                      storage_tokens_per_s=1000.0) == []


def test_no_move_when_its_own_replica_has_room_none_has_or_it_waited_too_long():
    roomy = [load("a", 500, waiting_tokens=300), load("b", 0)]
    assert plan_moves(roomy, [waiting("p", "a", 300, waited=100)], 300) == []
    full = [load("a", 1000), load("b", 900)]
    assert plan_moves(full, [waiting("p", "a", 300, waited=100)], 300) == []
    free = [load("a", 1000), load("b", 0)]
    assert plan_moves(free, [waiting("p", "a", 300, waited=300)], 300) == []
    assert plan_moves(free, [waiting("p", "a", 300, waited=0.2)], 300, min_wait_s=0.5) == []


def test_moves_take_the_smallest_first_and_do_not_overfill_the_target():
    loads = [load("a", 1000, waiting_tokens=850), load("b", 500), load("c", 800)]
    moves = plan_moves(loads, [waiting("big", "a", 400, waited=100),
                               waiting("small", "a", 150, waited=100),
                               waiting("mid", "a", 300, waited=100)], 300)
    assert [(m.program_id, m.target) for m in moves] == [("small", "b"), ("mid", "b")]
    assert [(m.program_id, m.target) for m in plan_moves(
        loads, [waiting("low", "a", 150, waited=100),
                waiting("high", "a", 450, waited=100, priority=1)], 300)] == [
        ("high", "b"), ("low", "c")]


def test_a_program_that_may_not_move_stays_and_counts_as_next_on_its_own_replica():
    rates = {"prefill_tokens_per_s": 100.0}
    # a's queue holds m (400) and q (300); without them a has 400 free: room for q, not m.
    # The replica resumes the smaller first, so q stays (m cannot move and does not fit).
    loads = [load("a", 600, waiting_tokens=700, **rates), load("b", 0, **rates)]
    moved_here = waiting("m", "a", 400, waited=0.0, may_move=False)
    assert plan_moves(loads, [moved_here, waiting("q", "a", 300, waited=100)], 300) == []
    # a smaller one that may not move takes its replica's room first: the other moves
    loads = [load("a", 750, waiting_tokens=550, **rates), load("b", 0, **rates)]
    assert [(m.program_id, m.target) for m in plan_moves(
        loads, [waiting("m", "a", 250, waited=0.0, may_move=False),
                waiting("q", "a", 300, waited=100)], 300)] == [("q", "b")]
    # one that may not move is never moved, however long it waited and cheap the move
    lone = [load("a", 1000, waiting_tokens=250, **rates), load("b", 0, **rates)]
    assert plan_moves(lone, [waiting("m", "a", 250, waited=100, may_move=False)], 300) == []
    assert [m.program_id for m in plan_moves(lone, [waiting("m", "a", 250, waited=100)],
                                             300)] == ["m"]


def test_prefix_keys_chain_whole_chunks_and_affinity_counts_leading_matches():
    shared = "s" * 512
    a, b = prefix_keys(shared + "x" * 300), prefix_keys(shared + "y" * 300)
    assert len(a) == 3 and a[:2] == b[:2] and a[2] != b[2]
    assert prefix_keys("short") == [] and prefix_keys("z" * 256) != prefix_keys("w" * 256)
    affinity = PrefixAffinity(max_keys=4)
    affinity.record("r1", a)
    assert (affinity.matched("r1", b), affinity.matched("r1", a), affinity.matched("r2", a)) \
        == (2, 3, 0)
    affinity.record("r1", prefix_keys("q" * 768))  # 3 more keys: the oldest 2 go
    assert affinity.matched("r1", a) == 0
    affinity.forget("r1")
    assert affinity.matched("r1", prefix_keys("q" * 768)) == 0


@pytest.mark.parametrize("text", ["foo", "ftp://h:1", "http://", "http://h:99999",
                                  "http://u:p@h:1", "http://h:1?x=1", "http://h:1,http://h:1",
                                  "a b=http://h:1", "a/b=http://h:1", "x=http://h:1,x=http://h:2",
                                  "=http://h:1", "x" * 65 + "=http://h:1"])
def test_a_malformed_backend_list_is_an_error_naming_it(text):
    with pytest.raises(SettingsError):
        backends(text)


def test_backend_urls_are_normalised_named_and_flags_checked():
    assert backends(" http://127.0.0.1:30000/ ,r-2=https://h/x/") == (
        ("http://127.0.0.1:30000", "https://h/x"), ("backend-0", "r-2"))
    with pytest.raises(SettingsError, match="--admin-api-key"):
        from_args(["--backends", ""])
    empty = from_args(["--admin-api-key", "adm"])
    assert (empty.backends, empty.names, empty.admin_api_key) == ((), (), "adm")
    settings = from_args(["--backends", "http://a:1", "--api-key", "k"])
    assert (settings.backend_api_key, settings.backend_admin_key, settings.migration) == (
        "k", "k", True)
    with pytest.raises(SettingsError, match="--poll-interval"):
        from_args(["--backends", "http://a:1", "--poll-interval", "0"])


def test_programs_placed_since_the_last_poll_spread_a_burst():
    loads = [load("a", 0, placed=1), load("b", 0)]
    assert place_new(loads, {}) == "b"


@pytest.mark.parametrize("bad", ["-1", "inf", "nan"])
def test_the_shared_storage_rate_is_a_finite_rate(bad):
    assert from_args(["--backends", "http://a:1"]).kv_storage_rate == 0.0
    assert from_args(["--backends", "http://a:1", "--kv-storage-rate", "8000"]
                     ).kv_storage_rate == 8000.0
    with pytest.raises(SettingsError, match="--kv-storage-rate"):
        from_args(["--backends", "http://a:1", "--kv-storage-rate", bad])
