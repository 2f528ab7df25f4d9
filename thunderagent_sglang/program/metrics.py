"""Prometheus text for the program table's figures (``thunderagent_`` series).

Pure: takes the scheduler's ``stats`` reply (``{"counters": ..., "live": ...}``)
and renders it with prometheus_client; no SGLang import.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


SCHEDULER_EVENTS = ("held_requests", "held_aborted", "held_shutdown", "held_refused",
                    "held_migrated",
                    "force_resumes", "marks", "retraction_orders")


class _StatsCollector:
    def __init__(self, stats: dict):
        self.stats = stats

    def collect(self):
        counters, live = self.stats["counters"], self.stats["live"]
        yield labelled(GaugeMetricFamily, "thunderagent_programs",
                        "Live programs by status.", "status", live["status"])
        yield labelled(GaugeMetricFamily, "thunderagent_programs_by_phase",
                        "Live programs by phase.", "phase", live["phase"])
        yield labelled(CounterMetricFamily, "thunderagent_program_releases",
                        "Programs ended, by cause.", "cause", counters["releases"])
        yield labelled(CounterMetricFamily, "thunderagent_prefill_tokens",
                        "Prompt tokens of tagged calls, computed or served from cache.", "kind",
                        {"computed": counters["prefill_tokens_computed"],
                         "cached": counters["prefill_tokens_cached"]})
        yield labelled(CounterMetricFamily, "thunderagent_missed_tokens",
                        "Recomputed prompt tokens of tagged calls, by cause.", "cause",
                        {"evicted": counters["missed_evicted_tokens"],
                         "changed": counters["missed_changed_tokens"]})
        yield labelled(CounterMetricFamily, "thunderagent_requests",
                        "Tagged LLM calls that arrived in / finished in the engine.", "event",
                        {"arrived": counters["requests_arrived"],
                         "finished": counters["requests_finished"]})
        yield GaugeMetricFamily(
            "thunderagent_demand_tokens",
            "Tokens in the union of active programs' latest contexts (shared prefixes once).",
            value=self.stats.get("demand_tokens", 0))
        kv = self.stats.get("kv")
        if kv is not None:
            yield labelled(CounterMetricFamily, "thunderagent_kv_decisions",
                            "What was done with paused programs' own device KV.", "decision",
                            kv["decisions"])
            yield labelled(CounterMetricFamily, "thunderagent_tool_kv_decisions",
                            "What was done with acting programs' own device KV at their tool "
                            "boundary (--thunderagent-tool-offload).", "decision",
                            kv.get("tool_decisions", {}))
            yield labelled(CounterMetricFamily, "thunderagent_prefetches",
                            "Loads of KV offloaded at a tool boundary, by how they served the "
                            "program's next call.", "outcome", kv.get("prefetches", {}))
            yield labelled(CounterMetricFamily, "thunderagent_kv_moved_tokens",
                            "Programs' own KV tokens offloaded to the host tier, dropped, "
                            "or loaded back (at resume or before a predicted return).", "event",
                            {"offloaded": kv["offloaded_tokens"], "dropped": kv["dropped_tokens"],
                             "prefetched": kv["prefetched_tokens"]})
        scheduler = self.stats.get("scheduler")
        if scheduler is not None:
            yield labelled(CounterMetricFamily, "thunderagent_scheduler_events",
                            "Scheduler events: calls held, held calls aborted by their client "
                            "or answered 503 at shutdown, calls answered 429 as too many were "
                            "held, force-resumes after max pause, marks for pause at the next "
                            "tool boundary, decode retractions reordered.",
                            "event", {key: scheduler.get(key, 0) for key in SCHEDULER_EVENTS})
            yield GaugeMetricFamily("thunderagent_held_calls",
                                    "Calls held now (their programs paused or not admitted).",
                                    value=scheduler.get("held_now", 0))
        tools = self.stats.get("tools")
        if tools:
            yield labelled(CounterMetricFamily, "thunderagent_acting_phases",
                            "Acting phases observed (a call's finish to the next call), by the "
                            "tool named for them (gap: none named; other: beyond 64 names).",
                            "tool", {k: v["observations"] for k, v in tools.items()})
            median = GaugeMetricFamily("thunderagent_acting_seconds",
                                       "Acting-phase length by tool over its last 64 phases.",
                                       labels=["tool", "quantile"])
            for key, v in tools.items():
                median.add_metric([key, "0.5"], v["median_s"])
                median.add_metric([key, "0.9"], v["p90_s"])
            yield median
        sent = self.stats.get("sidecar_events")
        if sent is not None:
            yield labelled(CounterMetricFamily, "thunderagent_sidecar_events",
                            "Program events to the sidecar: acknowledged, refused for good, "
                            "dropped as the queue was full; and retries of undelivered ones.",
                            "outcome", {k: sent[k] for k in ("acknowledged", "refused",
                                                              "dropped", "retries")})
            yield GaugeMetricFamily("thunderagent_sidecar_events_queued",
                                    "Program events waiting for the sidecar's acknowledgement.",
                                    value=sent["queued"])
        for name, key, help_text in (
                ("pauses", "pauses", "Program pauses."),
                ("resumes", "resumes", "Program resumes."),
                ("decode_tokens", "decode_tokens", "Output tokens of tagged calls."),
                ("program_incarnations", "programs_created", "Programs (incarnations) started.")):
            yield CounterMetricFamily(f"thunderagent_{name}", help_text, value=counters[key])


def labelled(family, name: str, help_text: str, label: str, values: dict):
    """A metric family with one sample per ``values`` item, labelled ``label=key``."""
    metric = family(name, help_text, labels=[label])
    for key, value in values.items():
        metric.add_metric([str(key)], value)
    return metric


def render(stats: dict) -> bytes:
    """The Prometheus text exposition of ``stats``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    return generate_latest(registry)


def render_age(age_s: float) -> bytes:
    """``thunderagent_stats_age_seconds``: how old the scheduler's figures above are (a scrape
    that found the scheduler busy gets its last answer)."""
    return (b"# HELP thunderagent_stats_age_seconds Seconds since the scheduler gave the "
            b"thunderagent_ figures above (0 unless it was busy for the scrape).\n"
            b"# TYPE thunderagent_stats_age_seconds gauge\n"
            + f"thunderagent_stats_age_seconds {round(age_s, 3)}\n".encode())
