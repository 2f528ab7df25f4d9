"""The benchmark's figures: which calls a window counts, percentiles, fractions of the limit."""

from __future__ import annotations

from benchmarks.agentic.player import CallRecord, ProgramRecord, Recorder
from benchmarks.agentic.report import loop_ms_per_call, percentile, rollout_figures, serving_figures, with_limit_fractions


def recorder() -> Recorder:
    rec = Recorder()
    # (program, turn, start, end, prompt, cached, output)
    rec.calls = [CallRecord("a", 0, 0.0, 9.0, 1000, 0, 16),      # ends in the warm-up: not counted
                 CallRecord("a", 1, 12.0, 14.0, 1500, 1000, 16),
                 CallRecord("b", 0, 15.0, 19.0, 1000, 768, 16),
                 CallRecord("b", 1, 25.0, 31.0, 1400, 0, 16)]    # ends after the window: not counted
    rec.programs = [ProgramRecord("a", 0.0, 14.5, 2), ProgramRecord("b", 15.0, 31.5, 2)]
    return rec


def test_a_serving_window_counts_calls_and_programs_that_end_inside_it():
    f = serving_figures(recorder(), warmup_s=10, window_s=20)
    assert (f["calls"], f["steps_per_min"]) == (2, 6.0)
    assert (f["prompt_tokens"], f["cached_tokens"], f["prefill_recomputed_tokens"]) == (2500, 1768, 732)
    assert f["kv_hit_rate"] == round(1768 / 2500, 4)
    assert (f["call_latency_p50_s"], f["programs_completed"], f["program_time_p50_s"]) == (3.0, 1, 14.5)


def test_a_rollout_counts_every_call_over_the_makespan():
    f = rollout_figures(recorder())
    assert (f["calls"], f["makespan_s"], f["steps_per_min"]) == (4, 31.5, round(4 / (31.5 / 60), 2))
    assert f["program_time_p95_s"] == round(14.5 + 0.95 * (16.5 - 14.5), 3)


def test_percentiles_interpolate_like_numpy():
    assert percentile([1, 2, 3, 4], 50) == 2.5 and percentile([5], 95) == 5 and percentile([], 50) is None


def test_fractions_are_of_the_limit_at_the_same_load():
    points = [{"mode": "serve", "concurrency": n, "system": s, "figures": {"steps_per_min": v}}
              for n, s, v in [(8, "plain", 30.0), (8, "limit", 60.0), (16, "plain", 20.0), (16, "x", 5.0)]]
    assert [p["fraction_of_limit"] for p in with_limit_fractions(points)] == [0.5, 1.0, None, None]


def test_scheduler_loop_time_leaves_out_the_forward_pass_and_idling():
    m = {'sglang:scheduler_stage_seconds_total{category="run_batch"}': 9.0,
         'sglang:scheduler_stage_seconds_total{category="idle"}': 5.0,
         'sglang:scheduler_stage_seconds_total{category="recv_requests"}': 0.2,
         'sglang:scheduler_stage_seconds_total{category="process_batch_result"}': 0.3}
    assert loop_ms_per_call(m, 10) == 50.0 and loop_ms_per_call({}, 10) is None


def test_fleet_imbalance_is_the_time_mean_of_the_spread_and_skips_partial_samples():
    from benchmarks.agentic.fleet import imbalance

    got = imbalance([[0.5, 0.1], [0.2, 0.4], [None, 0.3], [0.3, 0.3]])
    # every pair of A's (0.5, 0.2, 0.3) and B's (0.1, 0.4, 0.3) samples
    pairs = [0.4, 0.1, 0.2, 0.1, 0.2, 0.1, 0.2, 0.1, 0.0]
    assert got == {"kv_imbalance": round((0.4 + 0.2 + 0.0) / 3, 4),
                   "kv_usage_mean": [round(1.0 / 3, 4), round(0.8 / 3, 4)],
                   "kv_mean_gap": round(round(1.0 / 3, 4) - round(0.8 / 3, 4), 4),
                   "kv_imbalance_independent": round(sum(pairs) / 9, 4), "samples": 3}
    assert imbalance([[0.1, 0.2, 0.6]])["kv_imbalance_independent"] is None
    assert imbalance([]) == {"kv_imbalance": None, "kv_usage_mean": None, "kv_mean_gap": None,
                             "kv_imbalance_independent": None, "samples": 0}


def test_the_kv_usage_sample_asks_every_replica_at_once():
    import asyncio

    import httpx

    from benchmarks.agentic.fleet import kv_usage

    async def go():
        arrived, everyone = [], asyncio.Event()

        async def handler(request):
            arrived.append(request.url.host)
            if len(arrived) == 3:
                everyone.set()
            await asyncio.wait_for(everyone.wait(), 5)  # asked one by one, this times out
            if request.url.host == "c":
                return httpx.Response(200, text="other 1\n")
            value = {"a": "0.5", "b": "0.25"}[request.url.host]
            return httpx.Response(200, text=f'sglang:token_usage{{x="y"}} {value}\n')

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await kv_usage(http, ["http://a", "http://b", "http://c"])

    assert asyncio.run(go()) == [0.5, 0.25, None]


def test_a_metrics_sample_waits_for_the_schedulers_fresh_figures():
    import asyncio

    import httpx

    from benchmarks.agentic.server import sample_metrics

    replies = iter([
        "thunderagent_pauses_total 3.0\nthunderagent_stats_age_seconds 4.2\n",  # busy: stale
        "thunderagent_pauses_total 7.0\nthunderagent_stats_age_seconds 0.0\n",
    ])

    async def go():
        def handler(request):
            return httpx.Response(200, text=next(replies))

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await sample_metrics(http, "http://server")

    assert asyncio.run(go()) == {"thunderagent_pauses_total": 7.0}


def test_the_routers_staleness_is_read_from_its_sampled_view_ages_and_last_poll_latencies():
    from benchmarks.agentic.fleet import staleness

    def sample(a, b, p50=0.01, p99=0.2):
        return {"replicas": [{"view_age_s": a, "poll_p50_s": p50, "poll_p99_s": p99},
                             {"view_age_s": b, "poll_p50_s": p50 / 2, "poll_p99_s": 1.5}]}

    samples = [sample(0.1, 0.3), None, sample(0.2, None), sample(0.4, 2.5, p50=0.03)]
    got = staleness(samples)
    assert got == {"router_view_age_p50_s": 0.3, "router_view_age_p99_s": 2.5,
                   "router_view_age_max_s": 2.5, "router_poll_p50_s": 0.03,
                   "router_poll_p99_s": 1.5}
    assert staleness([]) == {k: None for k in got}
