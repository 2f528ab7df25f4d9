"""Every series the Grafana dashboard queries exists in a real server's /metrics (the shared
HiCache server: --enable-metrics, offload on), once a program has reasoned, acted and
reasoned again."""

from __future__ import annotations

import pytest
import requests

from tests.dashboard_series import load, queried
from tests.integration.conftest import API_KEY

pytestmark = pytest.mark.server
AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_every_series_the_dashboard_queries_is_in_the_servers_metrics(hicache_server):
    url, pid = hicache_server.url, "dashboard-1"
    for step in range(2):
        answer = requests.post(f"{url}/generate", headers={**AUTH, "X-Program-Id": pid},
                               timeout=120, json={"input_ids": [5 + step] * 40,
                                                  "sampling_params": {"max_new_tokens": 2}})
        assert answer.status_code == 200, answer.text
        if step == 0:
            for event in ({"event": "start", "tool": "bash"}, {"event": "end"}):
                assert requests.post(f"{url}/programs/{pid}/tool", json=event, headers=AUTH,
                                     timeout=30).status_code == 200
    text = requests.get(f"{url}/metrics", headers=AUTH, timeout=30).text
    present = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
               if line and not line.startswith("#")}
    assert queried(load()) - present == set()
    requests.post(f"{url}/programs/{pid}/release", headers=AUTH, timeout=30)
