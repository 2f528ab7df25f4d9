"""One shared server per configuration, started once per test session."""

from __future__ import annotations

import pytest

from tests.integration.server import Server

API_KEY = "test-secret-key"
# A small pool so that a handful of prompts floods the device KV pool; an API
# key, and a short idle expiry for the program tests that need them.
HICACHE_ARGS = [
    "--api-key", API_KEY, "--thunderagent-idle-expiry", "2", "--enable-metrics",
    "--thunderagent-link-untagged",
    "--enable-hierarchical-cache", "--hicache-io-backend", "direct",
    "--hicache-mem-layout", "layer_first", "--max-total-tokens", "1024",
    "--context-length", "1024", "--enable-cache-report",
    "--page-size", "16", "--chunked-prefill-size", "64",
    # A configured offload cost model, so its decisions are exact: 1 KiB/token over
    # 1 GB/s plus 2 ms, against 20000 tokens/s: programs under ~41 own tokens are dropped.
    "--thunderagent-offload-bandwidth", "1", "--thunderagent-offload-latency", "0.002",
    "--thunderagent-recompute-rate", "20000",
    # The paper's decay, whatever the decode steps measure: acting programs count less, so
    # more are admitted than the pool holds (what a tool boundary's offload is for).
    "--thunderagent-decay", "on",
]


def _server(request, tmp_path_factory, name, args, env):
    server = Server(name, args, env, tmp_path_factory.mktemp(name))
    request.addfinalizer(server.stop)
    return server.wait_ready()


@pytest.fixture(scope="session")
def default_server(request, tmp_path_factory):
    """Our launcher with no flags: CPU engine and demo model chosen by itself."""
    return _server(request, tmp_path_factory, "default", [], {})


@pytest.fixture(scope="session")
def plain_server(request, tmp_path_factory):
    """The same installation as plain SGLang (THUNDERAGENT_DISABLE=1)."""
    return _server(request, tmp_path_factory, "plain", [], {"THUNDERAGENT_DISABLE": "1"})


@pytest.fixture(scope="session")
def hicache_server(request, tmp_path_factory):
    return _server(request, tmp_path_factory, "hicache", HICACHE_ARGS, {})
