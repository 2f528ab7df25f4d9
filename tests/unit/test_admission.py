"""``policy.admission``: the feedback controller's factor on exact observations."""

from __future__ import annotations

import pytest

from thunderagent_sglang.policy.admission import AdmissionControl, Feedback, Observed


def seen(idle_s=0.0, evicted=0, rate=1000.0, seconds=5.0):
    return Observed(seconds, idle_s, evicted, rate)


def test_idle_with_calls_held_raises_the_factor_step_by_step_up_to_its_bound():
    control = AdmissionControl(max_factor=1.5, step=0.2)
    assert control.update(seen(idle_s=1.0)) == Feedback(1.2, 0.2, 0.0)
    assert control.update(seen(idle_s=1.0)).factor == 1.4
    assert control.update(seen(idle_s=1.0)).factor == 1.5


def test_recompute_from_eviction_lowers_it_but_never_below_one():
    control = AdmissionControl(step=1.0, decrease=0.5)
    control.update(seen(idle_s=2.0))
    control.update(seen(idle_s=2.0))
    assert control.factor == 3.0
    # 2500 tokens at 1000 tokens/s: 2.5 s of 5 recomputing, against no idle time; averaged
    # with the periods before (idle 0.4, recompute 0)
    assert control.update(seen(evicted=2500)) == Feedback(1.5, 0.2, 0.25)
    assert control.update(seen(evicted=2500)).factor == 1.0
    assert control.update(seen(evicted=2500)).factor == 1.0


def test_balanced_wastes_or_an_unknown_rate_leave_it_unchanged():
    control = AdmissionControl(margin=0.02)
    # idle 0.2 against recompute 0.19: within the margin
    assert control.update(seen(idle_s=1.0, evicted=950)) == Feedback(1.0, 0.2, 0.19)
    assert control.update(seen(idle_s=5.0, rate=None)) == Feedback(1.0, 0.6, 0.19)
    assert AdmissionControl().update(seen(idle_s=5.0, rate=None)) == Feedback(1.0, 1.0, None)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        AdmissionControl(decrease=1.0)
