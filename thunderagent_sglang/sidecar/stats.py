"""``GET /stats`` and ``GET /metrics``: environments, disk bytes (per env, program, total), ports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from thunderagent_sglang.program.metrics import labelled


def build(manager) -> dict:
    envs = manager.list()
    by_state: dict[str, int] = {}
    by_program: dict[str, int] = {}
    for env in envs:
        by_state[env.state] = by_state.get(env.state, 0) + 1
        by_program[env.spec.program_id] = by_program.get(env.spec.program_id, 0) + env.disk_bytes
    layers = manager.layer_bytes()
    c = manager.counters
    return {
        "envs": len(envs),
        "envs_by_state": by_state,
        "disk": {
            "total_bytes": manager.total_bytes,
            "high_water_bytes": manager.settings.disk_high_water,
            "by_env": {e.env_id: e.disk_bytes for e in envs},
            "by_program": by_program,
            "layers": layers,
        },
        "ports": {"range": list(manager.settings.port_range),
                  "reserved": {str(p): env for p, env in sorted(manager.ports.reserved().items())}},
        "programs_paused": sorted(manager.programs.paused),
        "counters": {"created": c.created, "destroyed": dict(c.destroyed),
                     "paused_by_gc": c.paused_by_gc, "execs": c.execs,
                     "exec_timeouts": c.exec_timeouts, "prepares": c.prepares},
    }


class _Collector:
    def __init__(self, stats: dict):
        self.stats = stats

    def collect(self):
        s, d = self.stats, self.stats["disk"]
        yield _family(GaugeMetricFamily, "thunderagent_sidecar_envs",
                      "Environments by state.", "state", s["envs_by_state"])
        yield _family(GaugeMetricFamily, "thunderagent_sidecar_disk_program_bytes",
                      "Disk bytes of each program's environments.", "program", d["by_program"])
        yield _family(GaugeMetricFamily, "thunderagent_sidecar_disk_env_bytes",
                      "Disk bytes of each environment.", "env", d["by_env"])
        total = GaugeMetricFamily("thunderagent_sidecar_disk_bytes",
                                  "Disk bytes of all environments and layers.")
        total.add_metric([], d["total_bytes"])
        yield total
        ports = GaugeMetricFamily("thunderagent_sidecar_ports_reserved", "Host ports reserved.")
        ports.add_metric([], len(s["ports"]["reserved"]))
        yield ports
        c = s["counters"]
        yield _family(CounterMetricFamily, "thunderagent_sidecar_envs_destroyed",
                      "Environments destroyed, by reason.", "reason", c["destroyed"])
        for key in ("created", "execs", "exec_timeouts", "paused_by_gc", "prepares"):
            fam = CounterMetricFamily(f"thunderagent_sidecar_{key}", f"Count of {key}.")
            fam.add_metric([], c[key])
            yield fam


def _family(kind, name: str, help_text: str, label: str, values: dict):
    return labelled(kind, name, help_text, label, dict(sorted(values.items())))


def render(stats: dict) -> bytes:
    registry = CollectorRegistry()
    registry.register(_Collector(stats))
    return generate_latest(registry)
