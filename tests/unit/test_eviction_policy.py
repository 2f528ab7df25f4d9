"""The eviction ranking by program state, exactly."""

from __future__ import annotations

import pytest

from thunderagent_sglang.policy.eviction import (
    EvictionClass,
    ProgramState,
    decayed_value,
    node_key,
    program_key,
)

HALF_LIFE = 10.0


def key(paused=False, reasoning=False, tokens=100, tool_s=0.0):
    return program_key(ProgramState(paused, reasoning, tokens, tool_s), HALF_LIFE)


def test_classes_rank_terminated_paused_untagged_acting_reasoning():
    order = [node_key([], retired=True), node_key([key(paused=True)], False),
             node_key([], retired=False), node_key([key()], False),
             node_key([key(reasoning=True)], False)]
    assert [k[0] for k in order] == [EvictionClass.TERMINATED, EvictionClass.PAUSED,
                                     EvictionClass.UNTAGGED, EvictionClass.ACTING,
                                     EvictionClass.REASONING]
    assert order == sorted(order)


def test_paused_programs_go_smallest_first():
    assert key(paused=True, tokens=50) < key(paused=True, tokens=5000)


def test_acting_programs_rank_by_decayed_value():
    assert decayed_value(1000, 10.0, HALF_LIFE) == 500.0
    assert decayed_value(1000, 20.0, HALF_LIFE) == 250.0
    long_tool = key(tokens=1000, tool_s=30.0)   # 125
    short_tool = key(tokens=400, tool_s=0.0)    # 400
    assert long_tool < short_tool


def test_a_shared_node_ranks_as_its_most_protected_user():
    shared = node_key([key(paused=True), key(reasoning=True), key()], retired=True)
    assert shared == (EvictionClass.REASONING, 100.0)


@pytest.mark.parametrize("tool_s", [-5.0, 0.0])
def test_no_decay_before_the_tool_starts(tool_s):
    assert decayed_value(64, tool_s, HALF_LIFE) == 64.0


def test_host_tier_keeps_live_programs_offloaded_kv_longest():
    from thunderagent_sglang.policy.eviction import host_node_key

    order = [host_node_key(False, retired=True), host_node_key(False, retired=False),
             host_node_key(True, retired=True)]
    assert order == sorted(order)
    assert [k[0] for k in order] == [EvictionClass.TERMINATED, EvictionClass.UNTAGGED,
                                     EvictionClass.REASONING]


def test_an_untagged_live_node_ranks_alike_on_device_and_host():
    """The cache's fast path for untagged nodes relies on this."""
    from thunderagent_sglang.policy.eviction import EvictionClass, host_node_key, node_key

    assert node_key((), retired=False) == host_node_key(False, retired=False)
    assert node_key((), retired=False) == (EvictionClass.UNTAGGED, 0.0)


def predicted(tokens, tool_s, predicted_s):
    return program_key(ProgramState(False, False, tokens, tool_s, predicted_s), HALF_LIFE)


def test_a_predicted_acting_phase_ranks_by_the_distance_to_its_return():
    assert predicted(1000, 0.0, 20.0) == (EvictionClass.ACTING, 250.0)  # back in 20 s
    assert predicted(1000, 15.0, 20.0) == (EvictionClass.ACTING, 1000 * 2 ** -0.5)
    assert predicted(1000, 20.0, 20.0) == (EvictionClass.ACTING, 1000.0)  # due now
    assert predicted(1000, 40.0, 20.0) == (EvictionClass.ACTING, 250.0)  # 20 s overdue
    # At the same elapsed time, a short tool's program keeps its KV over a long tool's.
    assert predicted(1000, 1.0, 30.0) < predicted(1000, 1.0, 0.5) < key(reasoning=True)
    assert predicted(1000, 1.0, None) == key(tokens=1000, tool_s=1.0)  # no prediction: decay
