"""Scheduler glue at the edges: decode retraction order, and held calls at shutdown."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

runtime_module = pytest.importorskip("thunderagent_sglang.engine.runtime")
program_retraction = pytest.importorskip("thunderagent_sglang.engine.program_retraction")
runtime_hooks = pytest.importorskip("thunderagent_sglang.engine.runtime_hooks")

from thunderagent_sglang import config  # noqa: E402
from thunderagent_sglang.policy.demand import block_keys  # noqa: E402


@pytest.fixture
def runtime():
    runtime = runtime_module.ProgramRuntime(config.ThunderAgentConfig())
    runtime.scheduler.set_capacity(4096)
    return runtime


@pytest.fixture
def table(runtime):
    return runtime.table


def retraction_orders(runtime):
    return runtime.scheduler.stats()["retraction_orders"]


def running(table, program_id, rid, context_tokens, output=2, runtime=None):
    """A running request of ``program_id`` whose program's context is ``context_tokens``."""
    if program_id is not None:
        table.on_arrival(program_id, rid)
        runtime.ledger.set_context(program_id, block_keys(list(range(context_tokens)), 16))
        runtime.ledger.set_active(program_id, True)
    return SimpleNamespace(rid=rid, origin_input_ids=[1] * context_tokens,
                           output_ids=[1] * output)


def sglang_keep_first(reqs):
    """SGLang 0.5.23's default: most-preferred to keep first, popped from the end."""
    return sorted(range(len(reqs)),
                  key=lambda i: (len(reqs[i].output_ids), -len(reqs[i].origin_input_ids)),
                  reverse=True)


def test_retraction_takes_the_marked_program_first_then_untagged_then_the_smallest(runtime):
    table = runtime.table
    reqs = [running(table, "big", "b1", 512, runtime=runtime),
            running(table, "marked", "m1", 960, runtime=runtime),
            running(table, None, "u1", 64), running(table, "small", "s1", 128, runtime=runtime)]
    runtime.scheduler.marked.add("marked")
    keep_first = runtime.retraction_order(sglang_keep_first, reqs)
    # popped from the end: marked, untagged, small, then big
    assert [reqs[i].rid for i in keep_first] == ["b1", "s1", "u1", "m1"]
    assert retraction_orders(runtime) == 1


def test_retraction_keeps_sglangs_order_when_nothing_running_is_tagged(runtime):
    reqs = [running(runtime.table, None, f"u{i}", 16 * (i + 1), output=i) for i in range(4)]
    assert runtime.retraction_order(sglang_keep_first, reqs) == sglang_keep_first(reqs)
    assert retraction_orders(runtime) == 0


def test_a_failing_retraction_order_falls_back_to_sglangs(runtime, monkeypatch):
    reqs = [running(runtime.table, "a", "a1", 64, runtime=runtime),
            running(runtime.table, "b", "b1", 32, runtime=runtime)]
    logged = []

    def broken(rid):
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.table, "program_for", broken)
    monkeypatch.setattr(program_retraction, "get_logger",
                        lambda: SimpleNamespace(exception=logged.append))
    assert runtime.retraction_order(sglang_keep_first, reqs) == sglang_keep_first(reqs)
    assert logged == ["ThunderAgent: decode retraction order failed; SGLang's kept"]


def test_shutdown_answers_every_held_call_and_any_held_later(runtime):
    sched = runtime.scheduler
    answered = []
    for rid in ("p-1", "p-2", "q-1"):
        sched.hold(rid[0], rid, 4, lambda track=True, chain=None: None)
    assert sched.shut_down(lambda item: answered.append(item.rid)) == 3
    assert answered == ["p-1", "p-2", "q-1"] and sched.held.count() == 0
    sched.hold("p", "p-3", 4, lambda track=True, chain=None: None)
    assert answered[-1] == "p-3" and sched.held.count() == 0
    assert sched.stats()["held_shutdown"] == 4


def test_a_call_answered_at_shutdown_goes_to_sglang_untracked_and_is_aborted_with_503(runtime):
    admitted, aborts = [], []
    runtime.sglang = SimpleNamespace(abort_request=aborts.append)
    runtime.scheduler.hold("p", "p-1", 4, lambda track=True, chain=None: admitted.append(track))
    runtime.scheduler.shut_down(runtime.answer_unavailable)
    assert admitted == [False]
    (abort,) = aborts
    assert abort.rid == "p-1" and not abort.abort_all
    assert abort.finished_reason == {"type": "abort", "status_code": 503, "err_type": None,
                                     "message": runtime_hooks.SHUTDOWN_MESSAGE}


def host_cache(size: int):
    """What the offloader reads of a HiCache-enabled cache: its host KV pool."""
    pool = SimpleNamespace(size=size, available_size=lambda: size // 2)
    return SimpleNamespace(host_pool_group=SimpleNamespace(get_pool=lambda name: pool))


@pytest.mark.parametrize("share, capacity", [(0.0, 4096), (0.5, 4096 + 4096), (1.0, 4096 + 8192)])
def test_host_admission_counts_its_share_of_the_host_tier_as_room(share, capacity):
    runtime = runtime_module.ProgramRuntime(config.ThunderAgentConfig(host_admission=share))
    runtime.offload.cache = host_cache(8192)
    assert runtime.offload.host_tokens() == 8192
    runtime.scheduler.set_capacity(4096, runtime.offload.host_tokens())
    assert runtime.scheduler.config.capacity_tokens == capacity
    assert runtime.scheduler.config.high_tokens == pytest.approx(0.95 * capacity)


def test_without_a_host_tier_there_is_nothing_to_count():
    runtime = runtime_module.ProgramRuntime(config.ThunderAgentConfig(host_admission=1.0))
    assert runtime.offload.host_tokens() == 0  # no cache yet
    runtime.offload.cache = SimpleNamespace()  # a cache without a host tier
    assert runtime.offload.host_tokens() == 0
    runtime.scheduler.set_capacity(4096, runtime.offload.host_tokens())
    assert runtime.scheduler.config.capacity_tokens == 4096


def test_the_host_admission_flag_takes_a_share_in_0_1():
    import argparse

    parser = argparse.ArgumentParser(exit_on_error=False)
    config.add_cli_group(parser)
    ns = parser.parse_args(["--thunderagent-host-admission", "0.5"])
    assert config.from_namespace(ns).host_admission == 0.5
    assert config.from_namespace(parser.parse_args([])).host_admission == 0.0
    for bad in ("-0.1", "1.5", "half"):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(["--thunderagent-host-admission", bad])
