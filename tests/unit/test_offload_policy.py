"""The keep/offload/drop cost model for paused programs' KV, on exact figures."""

from __future__ import annotations

import pytest

from thunderagent_sglang.policy.offload import CostModel, KvDecision, RateMeter, decide

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
