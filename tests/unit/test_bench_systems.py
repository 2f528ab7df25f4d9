"""The runner's table of systems: the ablation's variants (ours with offload, one mechanism off)
run only when named, each differing from ours-offload-auto by its one flag."""

from __future__ import annotations

import pytest

from benchmarks.agentic.systems import ABLATIONS, Pools, by_name

POOLS = Pools(device_tokens=16384, host_ratio=1.0, limit_tokens=262144,
              write_policy="write_back")


def test_the_default_set_leaves_the_ablation_out():
    assert [s.name for s in by_name(POOLS, None)] == [
        "plain", "plain-priority", "plain-hicache", "ours-sched-off", "ours-offload-off",
        "ours-offload-auto", "limit"]


@pytest.mark.parametrize("name, flag, value", [(n, f, v) for n, _, f, v in ABLATIONS])
def test_each_ablation_is_ours_with_offload_and_one_switch_off(name, flag, value):
    full, = by_name(POOLS, ["ours-offload-auto"])
    variant, = by_name(POOLS, [f"ours-no-{name}"])
    assert variant.args == (*full.args, flag, value) and variant.ours and not variant.by_default
    assert flag not in full.args


def test_the_single_engines_proxy_runs_when_named_over_one_plain_server_with_metrics():
    proxy, = by_name(POOLS, ["proxy"])
    plain, = by_name(POOLS, ["plain"])
    assert proxy.args == (*plain.args, "--enable-metrics") and proxy.env == plain.env
    assert (proxy.front, proxy.id_in_body, proxy.by_default, proxy.ours) == (
        "proxy", True, False, False)


def test_an_unknown_system_is_refused_naming_it():
    with pytest.raises(SystemExit, match="ours-no-such"):
        by_name(POOLS, ["ours-no-such"])


def test_the_fleets_default_set_is_the_issues_and_the_tier_systems_run_when_named():
    from benchmarks.agentic import fleet

    assert [s.name for s in fleet.by_name(POOLS, None)] == [
        "gateway", "proxy", "ours-router", "limit"]
    plain, offload, storage = fleet.by_name(
        POOLS, ["ours-router", "ours-router-offload", "ours-router-storage"])
    host = ("--enable-hierarchical-cache", "--hicache-io-backend", "direct",
            "--hicache-mem-layout", "layer_first", "--hicache-ratio", "1")
    assert offload.args == (*plain.args[:3], *host, "--hicache-write-policy", "write_back",
                            "--thunderagent-offload", "auto")
    assert storage.args == (*plain.args[:3], *host, "--hicache-write-policy", "write_through",
                            *fleet.STORAGE, "--thunderagent-offload", "auto")
    assert storage.front_args == ("--kv-storage-rate", fleet.STORAGE_RATE)
    assert (plain.front_args, offload.front_args) == ((), ())
    assert all(s.front == "router" and s.ours for s in (plain, offload, storage))


def test_a_front_whose_baseline_is_not_installed_stops_before_any_replica_starts(
        monkeypatch, tmp_path):
    from benchmarks.agentic import fleet

    proxy, = by_name(POOLS, ["proxy"])
    monkeypatch.setitem(fleet.FRONT_BINARIES, "proxy", tmp_path / "not-installed")
    started = []
    monkeypatch.setattr(fleet, "Server", lambda *a, **k: started.append(a))
    with pytest.raises(SystemExit, match="not-installed is missing: run "
                                         "benchmarks/fleet_baselines.sh first"):
        fleet.start(proxy, 1, tmp_path, tmp_path / "logs", "t")
    assert started == []
