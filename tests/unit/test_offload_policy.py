"""The keep/offload/drop cost model for paused programs' KV, on exact figures."""

from __future__ import annotations

import pytest

from thunderagent_sglang.policy.offload import (
    Boundary, Choice, CostModel, KvDecision, RateMeter, decide, decide_at_boundary, prefetch_due,
    prefetch_outcome)

# 1000 bytes per token over 1e9 B/s: 1 us per token, plus 1 ms per load-back.
LINK = dict(bytes_per_token=1000, bandwidth_bytes_per_s=1e9, latency_s=1e-3)


def model(rate):
    return CostModel(**LINK, recompute_tokens_per_s=rate)


def test_transfer_and_recompute_times():
    m = model(10_000.0)  # 100 us per token
    assert m.transfer_seconds(1000) == pytest.approx(1e-3 + 1e-3)
    assert m.recompute_seconds(1000) == pytest.approx(0.1)
    # latency / (1/rate - bpt/bw) = 1e-3 / (1e-4 - 1e-6)
    assert m.break_even_tokens() == pytest.approx(1e-3 / 99e-6)


def test_small_program_is_dropped_large_one_offloaded():
    m = model(10_000.0)  # break-even ~10.1 tokens
    assert decide(m, 10, 0, 1 << 20).decision is KvDecision.DROP
    assert decide(m, 11, 0, 1 << 20).decision is KvDecision.OFFLOAD


def test_offload_needs_host_room_only_for_the_part_not_yet_copied():
    m = model(10_000.0)
    assert decide(m, 500, 0, 0).decision is KvDecision.OFFLOAD  # write-through copied it all
    kept = decide(m, 500, 200, 199)
    assert kept.decision is KvDecision.KEEP
    assert kept.reason == "host tier has room for 199 tokens, 200 needed"
    assert decide(m, 500, 200, 200).decision is KvDecision.OFFLOAD


def test_without_a_host_tier_or_own_kv_it_keeps():
    assert decide(None, 500, 0, 100).decision is KvDecision.KEEP
    assert decide(model(10_000.0), 0, 0, 100).decision is KvDecision.KEEP


def test_unknown_rate_never_drops():
    m = model(None)
    assert m.break_even_tokens() is None
    choice = decide(m, 1, 0, 100)
    assert choice.decision is KvDecision.OFFLOAD
    assert "recompute unknown" in choice.reason


def test_recompute_cheaper_per_token_than_the_link_always_drops():
    m = model(2e6)  # 0.5 us per token < 1 us per token on the link
    assert m.break_even_tokens() is None
    assert decide(m, 1_000_000, 0, 1 << 30).decision is KvDecision.DROP


def test_rate_meter_is_tokens_over_time_of_the_window():
    meter = RateMeter(window=2)
    assert meter.rate() is None
    meter.add(100, 1.0)
    meter.add(300, 1.0)
    assert meter.rate() == 200.0
    meter.add(0, 1.0)  # ignored
    meter.add(500, 3.0)  # the first sample leaves the window
    assert len(meter) == 2 and meter.rate() == 200.0


def test_description_names_every_parameter():
    text = model(10_000.0).describe()
    assert text == ("bandwidth 1.00 GB/s, latency 1000 us, 1000 B/token, recompute "
                    "10000 tokens/s, break-even 10 tokens")
    assert "not measured yet" in model(None).describe()


# ---- the tool boundary (issue 15) ---------------------------------------------------------

def boundary(**changes):
    """1000 own tokens not yet on the host, predicted back in 2 s, 3000 tokens running."""
    base = dict(unique_tokens=1000, unbacked_tokens=1000, host_free_tokens=1 << 20,
                predicted_s=2.0, stall_tokens=3000, contended=True, min_predicted_s=1.0)
    return Boundary(**{**base, **changes})


def test_a_long_tool_offloads_by_memory_time():
    # keep 1000 x 2 s = 2000; offload (1000 + 3000) x (2 ms write + 2 ms load) = 16;
    # drop (1000 + 3000) x 0.1 s recompute = 400
    got = decide_at_boundary(model(10_000.0), boundary())
    assert got == Choice(KvDecision.OFFLOAD,
                         "offload 16 token-s against keep 2000 (1000 tokens, back in 2.00 s)")


def test_copies_already_on_the_host_cost_no_write():
    got = decide_at_boundary(model(10_000.0), boundary(unbacked_tokens=0, host_free_tokens=0))
    assert got.reason == "offload 8 token-s against keep 2000 (1000 tokens, back in 2.00 s)"


def test_without_host_room_the_cheaper_of_drop_and_keep():
    full = dict(host_free_tokens=999)
    assert decide_at_boundary(model(10_000.0), boundary(**full)) == Choice(
        KvDecision.DROP, "drop 400 token-s against keep 2000 (1000 tokens, back in 2.00 s)")
    # a large running batch makes the recompute's stall dearer than holding the KV
    assert decide_at_boundary(model(10_000.0), boundary(
        **full, predicted_s=1.5, stall_tokens=100_000)) == Choice(
        KvDecision.KEEP, "keep 1500 token-s against drop 10100")
    assert decide_at_boundary(model(None), boundary(**full)) == Choice(
        KvDecision.KEEP, "keep 2000 token-s")


@pytest.mark.parametrize("changes, reason", [
    (dict(predicted_s=0.9), "predicted back in 0.90 s, under 1.00 s"),
    (dict(predicted_s=None), "no prediction of its tool time yet"),
    (dict(contended=False), "the pool is not contended: keeping denies no one"),
    (dict(unique_tokens=0), "holds no KV of its own on the device"),
])
def test_a_short_unknown_or_uncontended_tool_keeps(changes, reason):
    assert decide_at_boundary(model(10_000.0), boundary(**changes)) == Choice(
        KvDecision.KEEP, reason)
    assert decide_at_boundary(None, boundary()) == Choice(
        KvDecision.KEEP, "no host tier or offload off")


def test_the_prefetch_starts_one_transfer_before_the_predicted_return():
    m = model(10_000.0)
    assert prefetch_due(m, 1000, 10.0, 2.0) == pytest.approx(11.998)
    assert prefetch_due(m, 1000, 10.0, 0.001) == 10.0  # the transfer is longer: at once


def test_a_prefetch_is_on_time_early_or_wasted():
    assert prefetch_outcome(10.0, 10.4, 500, 500, 0.5) == "on_time"
    assert prefetch_outcome(10.0, 10.6, 500, 500, 0.5) == "early"
    assert prefetch_outcome(10.0, 10.1, 499, 500, 0.5) == "wasted"
