"""The Grafana dashboard's file: importable (a Prometheus data-source input, a uid), panels
laid out without overlap, every query on our series or SGLang's."""

from __future__ import annotations

from tests.dashboard_series import load, queried


def test_the_dashboard_imports_with_a_prometheus_input_and_panels_that_do_not_overlap():
    dashboard = load()
    assert [i["pluginId"] for i in dashboard["__inputs"]] == ["prometheus"]
    assert dashboard["uid"] == "thunderagent-sglang"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(set(cells)) == len(cells)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}" and panel["targets"]
        assert all(t["expr"] and t["refId"] for t in panel["targets"])


def test_every_query_reads_our_series_or_sglangs():
    names = queried(load())
    assert len(names) >= 20
    assert all(n.startswith(("thunderagent_", "sglang:")) for n in names)
    assert {n for n in names if n.startswith("thunderagent_")} >= {
        "thunderagent_programs", "thunderagent_demand_tokens", "thunderagent_pauses_total",
        "thunderagent_missed_tokens_total", "thunderagent_kv_decisions_total"}
