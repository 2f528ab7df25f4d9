"""The series the committed Grafana dashboard queries (its panels' and variables' PromQL)."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = Path(__file__).resolve().parents[1] / "dashboards" / "thunderagent-grafana.json"
SERIES = re.compile(r"\b(thunderagent_[a-z_]+|sglang:[a-z_:]+)\{")


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def queried(dashboard: dict) -> set[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"]]
    return {name for expr in exprs for name in SERIES.findall(expr)}
