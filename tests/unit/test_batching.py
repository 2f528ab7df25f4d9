"""Whether decay pays: the decode steps' line, the shared fraction, the switch; the engine's
meter on SGLang-shaped batches and the scheduler turning decay off and on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from thunderagent_sglang.policy.batching import OFF_BELOW, ON_FROM, StepFit, decay_wanted


def fit_of(samples, **kwargs) -> StepFit:
    fit = StepFit(**kwargs)
    for n, s in samples:
        fit.add(n, s)
    return fit


def test_the_line_and_the_shared_fraction_are_exact_on_exact_steps():
    fit = fit_of([(n, 0.02 + 0.001 * n) for n in range(1, 65)])
    a, b = fit.line()
    assert (round(a, 9), round(b, 9)) == (0.02, 0.001)
    assert fit.shared_fraction() == pytest.approx(0.02 / (0.02 + 0.001 * 32.5))


def test_no_fraction_from_too_few_steps_one_batch_size_or_a_line_below_zero():
    assert fit_of([(n, 0.01 * n) for n in range(1, 64)]).shared_fraction() is None  # 63 < 64
    assert fit_of([(4, 0.05)] * 100).shared_fraction() is None  # one size: no slope
    assert fit_of([(4, 0.05), (5, 0.05)] * 50).line() is None  # spread 1 < 2
    assert fit_of([(n, 1e-9) for n in range(1, 65)]).shared_fraction() == 1.0
    fit = fit_of([(n, 0.01 * n) for n in range(1, 65)])
    assert fit.shared_fraction() == pytest.approx(0.0, abs=1e-9)


def test_the_fraction_is_clipped_to_zero_and_bad_samples_are_ignored():
    fit = fit_of([(n, 0.01 * n - 0.005) for n in range(1, 65)])  # a negative intercept
    fit.add(0, 1.0)
    fit.add(3, 0.0)
    fit.add(3, -1.0)
    assert len(fit) == 64 and fit.shared_fraction() == 0.0


def test_the_window_keeps_the_last_steps():
    fit = fit_of([(n, 0.01 * n) for n in range(1, 65)], window=64)
    for n in range(1, 65):
        fit.add(n, 0.05 + 0.001 * n)
    assert fit.shared_fraction() == pytest.approx(0.05 / (0.05 + 0.0325))


def test_decay_turns_on_from_one_bound_off_below_the_other_and_holds_between_and_unknown():
    assert decay_wanted(ON_FROM, current=False) is True
    assert decay_wanted(OFF_BELOW - 0.01, current=True) is False
    for between in (OFF_BELOW, (OFF_BELOW + ON_FROM) / 2, ON_FROM - 0.01):
        assert (decay_wanted(between, True), decay_wanted(between, False)) == (True, False)
    assert (decay_wanted(None, current=True), decay_wanted(None, current=False)) == (True, False)


def batch(mode: str, size: int):
    return SimpleNamespace(forward_mode=SimpleNamespace(is_decode=lambda: mode == "decode"),
                           batch_size=lambda: size)


def test_the_meter_times_a_decode_step_from_one_batch_start_to_the_next_decode_batch():
    decode_meter = pytest.importorskip("thunderagent_sglang.engine.decode_meter")
    times = iter([0.0, 0.5, 0.7, 2.0, 2.25, 9.0])
    meter = decode_meter.DecodeMeter(clock=lambda: next(times))
    for b in (batch("decode", 4), batch("decode", 6), batch("extend", 3),
              batch("decode", 2), batch("decode", 8)):
        assert meter.time_batch("scheduler", b) is None
    meter.time_batch("scheduler", None)  # an idle loop: no batch
    assert list(meter.fit._samples) == [(4, 0.5), (2, 0.25)]  # not across the prefill batch
    assert meter.stats() == {"decode_steps_timed": 2, "decode_shared_fraction": None}


def test_a_failing_batch_is_logged_and_run_anyway():
    decode_meter = pytest.importorskip("thunderagent_sglang.engine.decode_meter")
    meter = decode_meter.DecodeMeter()
    assert meter.time_batch("scheduler", SimpleNamespace()) is None  # no forward_mode
    assert len(meter.fit) == 0


def test_the_scheduler_turns_decay_off_on_a_cpu_like_line_and_on_again():
    runtime_module = pytest.importorskip("thunderagent_sglang.engine.runtime")
    from thunderagent_sglang import config

    runtime = runtime_module.ProgramRuntime(config.ThunderAgentConfig())
    scheduler = runtime.scheduler
    scheduler.set_capacity(4096)
    assert scheduler.config.decay is True  # auto starts on (the paper's rule) until measured
    meter = runtime.decode_meter
    meter.fit = StepFit(window=64)  # the last 64 steps only
    for n in range(1, 65):
        meter.fit.add(n, 0.004 + 0.01 * n)  # this CPU's fitted model: about 1% shared
    meter._added = 64
    scheduler.check("tick")
    assert (scheduler.config.decay, scheduler.counters["decay_switches"]) == (False, 1)
    assert scheduler.stats()["decay"] is False
    for n in range(1, 65):
        meter.fit.add(n, 0.03 + 0.0005 * n)  # a GPU-like line: most of a step shared
    meter._added = 128
    scheduler.check("tick")
    assert (scheduler.config.decay, scheduler.counters["decay_switches"]) == (True, 2)
    fixed = runtime_module.ProgramRuntime(config.ThunderAgentConfig(decay="off"))
    fixed.scheduler.set_capacity(4096)
    for n in range(1, 65):
        fixed.decode_meter.fit.add(n, 0.03 + 0.0005 * n)
    fixed.decode_meter._added = 64
    fixed.scheduler.check("tick")
    assert fixed.scheduler.config.decay is False and fixed.scheduler.counters["decay_switches"] == 0
