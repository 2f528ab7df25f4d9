"""Recomputed prefill split into 'evicted' and 'changed', exactly."""

from __future__ import annotations

from thunderagent_sglang.program.misses import Misses, as_tokens, classify, common_prefix_len, kv_sequence

PREV = kv_sequence(list(range(100)), [500, 501, 502, 503])  # 100 prompt + 3 output tokens with KV


def prompt(*parts) -> "object":
    return as_tokens([t for part in parts for t in part])


def test_first_call_has_no_misses():
    assert classify(None, as_tokens(range(50)), cached=0) == Misses(0, 0)


def test_kv_sequence_drops_the_last_output_token():
    assert len(PREV) == 103 and PREV[-1] == 502


def test_extension_fully_cached_has_no_misses():
    new = prompt(range(100), [500, 501, 502, 503], range(900, 950))
    assert classify(PREV, new, cached=103) == Misses(0, 0)


def test_extension_after_eviction_counts_the_lost_own_prefix():
    new = prompt(range(100), [500, 501, 502, 503], range(900, 950))
    # Only a shared 20-token system prompt was still cached.
    assert classify(PREV, new, cached=20) == Misses(evicted=83, changed=0)


def test_client_changed_an_earlier_token():
    # Position 60 differs: 0..59 reusable; 60..102 had KV but the client changed them.
    new = prompt(range(60), [7777], range(61, 100), [500, 501, 502, 503], range(900, 910))
    assert classify(PREV, new, cached=60) == Misses(evicted=0, changed=43)


def test_changed_prefix_and_eviction_together():
    new = prompt(range(60), [7777], range(61, 120))
    assert classify(PREV, new, cached=10) == Misses(evicted=50, changed=43)


def test_cache_hit_from_another_program_beyond_the_divergence_is_not_a_miss():
    new = prompt(range(60), [7777], range(61, 120))
    assert classify(PREV, new, cached=80) == Misses(evicted=0, changed=23)


def test_the_last_prompt_token_and_partial_pages_are_never_misses():
    same = prompt(range(100), [500, 501, 502])  # exactly the previous KV sequence again
    assert classify(PREV, same, cached=102) == Misses(0, 0)
    assert classify(PREV, same, cached=96, page_size=16) == Misses(0, 0)
    assert classify(PREV, same, cached=80, page_size=16) == Misses(evicted=16, changed=0)


def test_common_prefix_len():
    assert common_prefix_len(as_tokens([1, 2, 3]), as_tokens([1, 2, 4, 5])) == 2
    assert common_prefix_len(as_tokens([1, 2]), as_tokens([1, 2, 3])) == 2
    assert common_prefix_len(as_tokens([]), as_tokens([1])) == 0
