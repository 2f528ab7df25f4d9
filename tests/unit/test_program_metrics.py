"""The thunderagent_ Prometheus series rendered from the scheduler's stats."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from thunderagent_sglang.program.metrics import render
from thunderagent_sglang.program.table import ProgramTable

STATS = {
    "counters": {"releases": {"explicit": 1, "final": 0, "idle": 2},
                 "prefill_tokens_computed": 10, "prefill_tokens_cached": 5,
                 "requests_arrived": 4, "requests_finished": 3, "pauses": 1, "resumes": 0,
                 "decode_tokens": 7, "programs_created": 2,
                 "missed_evicted_tokens": 3, "missed_changed_tokens": 1},
    "live": {"status": {"active": 1, "paused": 0}, "phase": {"reasoning": 0, "acting": 1}},
}


def samples(text: bytes) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode())
            for s in family.samples}


def test_every_figure_becomes_one_sample():
    got = samples(render(STATS))
    assert got[("thunderagent_programs", (("status", "active"),))] == 1
    assert got[("thunderagent_programs_by_phase", (("phase", "acting"),))] == 1
    assert got[("thunderagent_program_releases_total", (("cause", "idle"),))] == 2
    assert got[("thunderagent_prefill_tokens_total", (("kind", "computed"),))] == 10
    assert got[("thunderagent_prefill_tokens_total", (("kind", "cached"),))] == 5
    assert got[("thunderagent_requests_total", (("event", "arrived"),))] == 4
    assert got[("thunderagent_missed_tokens_total", (("cause", "evicted"),))] == 3
    assert got[("thunderagent_missed_tokens_total", (("cause", "changed"),))] == 1
    assert got[("thunderagent_pauses_total", ())] == 1
    assert got[("thunderagent_decode_tokens_total", ())] == 7
    assert got[("thunderagent_program_incarnations_total", ())] == 2
    assert all(name.startswith("thunderagent_") for name, _ in got)


def test_a_real_tables_stats_render():
    table = ProgramTable(idle_expiry_s=60)
    table.on_arrival("p", "r1")
    table.on_finish("r1", prompt_tokens=30, cached_tokens=20, output_tokens=4)
    got = samples(render({"counters": table.counters, "live": table.live_count_by()}))
    assert got[("thunderagent_prefill_tokens_total", (("kind", "computed"),))] == 10
    assert got[("thunderagent_prefill_tokens_total", (("kind", "cached"),))] == 20
    assert got[("thunderagent_programs_by_phase", (("phase", "acting"),))] == 1


def test_kv_offload_figures_render_when_present():
    kv = {"decisions": {"keep": 1, "offload": 2, "drop": 3},
          "offloaded_tokens": 96, "dropped_tokens": 32, "prefetched_tokens": 80}
    got = samples(render({**STATS, "kv": kv}))
    assert got[("thunderagent_kv_decisions_total", (("decision", "drop"),))] == 3
    assert got[("thunderagent_kv_decisions_total", (("decision", "offload"),))] == 2
    assert got[("thunderagent_kv_moved_tokens_total", (("event", "offloaded"),))] == 96
    assert got[("thunderagent_kv_moved_tokens_total", (("event", "dropped"),))] == 32
    assert got[("thunderagent_kv_moved_tokens_total", (("event", "prefetched"),))] == 80
    assert not any(name.startswith("thunderagent_kv") for name, _ in samples(render(STATS)))


def test_scheduler_events_render_when_present():
    scheduler = {"held_requests": 5, "held_aborted": 1, "held_shutdown": 2, "held_refused": 7,
                 "held_migrated": 8, "force_resumes": 3, "marks": 4, "retraction_orders": 6, "held_now": 9}
    got = samples(render({**STATS, "scheduler": scheduler}))
    events = {labels[0][1]: value for (name, labels), value in got.items()
              if name == "thunderagent_scheduler_events_total"}
    assert events == {"held_requests": 5, "held_aborted": 1, "held_shutdown": 2,
                      "held_refused": 7, "held_migrated": 8, "force_resumes": 3, "marks": 4,
                      "retraction_orders": 6}
    assert got[("thunderagent_held_calls", ())] == 9
    assert not any(n == "thunderagent_scheduler_events_total" for n, _ in samples(render(STATS)))


def test_acting_phases_and_sidecar_events_render_when_present():
    tools = {"gap": {"observations": 3, "median_s": 0.5, "p90_s": 2.0},
             "pytest": {"observations": 1, "median_s": 30.0, "p90_s": 30.0}}
    sent = {"acknowledged": 5, "refused": 1, "dropped": 2, "retries": 4, "queued": 3}
    got = samples(render({**STATS, "tools": tools, "sidecar_events": sent}))
    assert got[("thunderagent_acting_phases_total", (("tool", "gap"),))] == 3
    assert got[("thunderagent_acting_seconds", (("quantile", "0.9"), ("tool", "gap")))] == 2.0
    assert got[("thunderagent_acting_seconds", (("quantile", "0.5"), ("tool", "pytest")))] == 30
    assert {labels[0][1]: v for (name, labels), v in got.items()
            if name == "thunderagent_sidecar_events_total"} == {
        "acknowledged": 5, "refused": 1, "dropped": 2, "retries": 4}
    assert got[("thunderagent_sidecar_events_queued", ())] == 3
    plain = samples(render(STATS))
    assert not any(n.startswith(("thunderagent_acting", "thunderagent_sidecar")) for n, _ in plain)
