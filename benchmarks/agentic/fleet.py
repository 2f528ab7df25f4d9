"""The runner's fleet mode (``--replicas N``): N replicas on this machine, each pinned to its
own cores, and one front (our router, SGLang's gateway, or the published ThunderAgent proxy).
A single-engine system with a front (``proxy``) starts here too, as one unpinned replica.

Pinning: replica i runs under ``taskset -c <its cores>`` and with
``SGLANG_CPU_OMP_THREADS_BIND=<its cores>`` (SGLang's CPU thread binding), the cores split
evenly, so the replicas share the machine fairly and do not fight over one core's threads.
The front and the player run unpinned.

The baselines are installed outside the package by ``benchmarks/fleet_baselines.sh``
(``.bench-env/``): ``smg`` (SGLang's gateway, pinned on PyPI) and the published proxy from its
source. Every fleet system serves with ``--enable-metrics`` (the proxy reads SGLang's
``sglang:token_usage``; the runner samples it for the KV imbalance).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.agentic.systems import PLAIN, Pools, System, host_tier
from tests.integration.router_process import RouterProcess, stop_process
from tests.integration.server import REPO, Server, free_port

BENCH_ENV = REPO / ".bench-env"
SMG = BENCH_ENV / "smg" / "bin" / "smg"
PROXY = BENCH_ENV / "proxy" / "bin" / "thunderagent"
FRONT_READY_S = 120
# A busy CPU replica answers /health slower than smg's 5 s probe, and smg then opens its
# circuit breaker on both replicas ("All workers are unavailable", the first run's end): its
# health checks and breaker are off, so what is measured is its placement policy.
SMG_CPU_FLAGS = ("--disable-health-check", "--disable-circuit-breaker")


# A KV storage tier the replicas share (SGLang's HiCache file backend on one directory per
# fleet start), as CI's router tests run it: pages of 16, write-through to the host tier,
# prefetch waits for a load. It needs a fresh directory (the file backend never deletes).
STORAGE = ("--page-size", "16", "--hicache-storage-backend", "file",
           "--hicache-storage-prefetch-policy", "wait_complete")
STORAGE_DIR_ENV = "SGLANG_HICACHE_FILE_BACKEND_STORAGE_DIR"
# The router's price of loading from it: the middle row (4000 tokens) of
# benchmarks/results/storage_rate.json on this machine, tokens per second.
STORAGE_RATE = "6734"


def fleet_systems(pools: Pools) -> list[System]:
    device = ("--max-total-tokens", str(pools.device_tokens), "--enable-metrics")
    limit = ("--max-total-tokens", str(pools.limit_tokens), "--enable-metrics")
    return [
        System("gateway", "SGLang replicas + SGLang gateway (smg cache_aware)", device, PLAIN,
               ours=False, front="smg"),
        System("proxy", "SGLang replicas + published ThunderAgent proxy (tr)", device, PLAIN,
               ours=False, front="proxy", id_in_body=True),
        System("ours-router", "ThunderAgent replicas (offload off) + our router",
               (*device, "--thunderagent-offload", "off"), {}, ours=True, front="router"),
        System("limit", "no eviction (limit) + smg cache_aware", limit, PLAIN, ours=False,
               is_limit=True, front="smg"),
        # beside the configuration, run only when named: a host tier per replica
        System("ours-router-offload", "ThunderAgent replicas + offload + our router",
               (*device, *host_tier(pools), "--thunderagent-offload", "auto"), {}, ours=True,
               front="router",
               by_default=False),
        System("ours-router-storage",
               "ThunderAgent replicas + offload + shared KV storage + our router",
               (*device, *host_tier(pools, "write_through"), *STORAGE,
                "--thunderagent-offload", "auto"), {}, ours=True, front="router",
               by_default=False, front_args=("--kv-storage-rate", STORAGE_RATE)),
    ]


def by_name(pools: Pools, names: list[str] | None) -> list[System]:
    table = fleet_systems(pools)
    if not names:
        return [s for s in table if s.by_default]
    unknown = [n for n in names if n not in {s.name for s in table}]
    if unknown:
        raise SystemExit(f"unknown fleet system(s) {unknown}; choose from "
                         f"{[s.name for s in table]}")
    return [s for s in table if s.name in names]


def core_groups(n: int) -> list[str]:
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < n:
        raise SystemExit(f"--replicas {n} needs at least {n} cores; this machine has "
                         f"{len(cores)}")
    size = len(cores) // n
    return [",".join(map(str, cores[i * size:(i + 1) * size])) for i in range(n)]


@dataclass
class Fleet:
    url: str
    replicas: list[Server]
    front: object  # RouterProcess or Popen
    front_url: str
    kind: str
    logs: list = field(default_factory=list)

    def stop(self) -> None:
        if isinstance(self.front, RouterProcess):
            self.front.stop()
        elif self.front is not None:
            stop_process(self.front, 15)
        for log in self.logs:
            log.close()
        for replica in self.replicas:
            replica.stop()


FRONT_BINARIES = {"smg": SMG, "proxy": PROXY}  # installed by benchmarks/fleet_baselines.sh


def start(system: System, n: int, model_dir: Path, log_dir: Path, tag: str) -> Fleet:
    if system.front in FRONT_BINARIES:  # before any replica starts, not after
        _need(FRONT_BINARIES[system.front])
    log_dir.mkdir(parents=True, exist_ok=True)
    replicas = []
    shared = {}
    if "--hicache-storage-backend" in system.args:  # one fresh store for this fleet's replicas
        shared = {STORAGE_DIR_ENV: str(log_dir / f"kv-storage-{tag}")}
    try:
        for i, cores in enumerate(core_groups(n) if n > 1 else [None]):
            env = {**system.env, **shared, "THUNDERAGENT_DEBUG_MEMCHECK": "0"}
            prefix = ()
            if cores is not None:  # one replica (a front over one server) runs unpinned
                env["SGLANG_CPU_OMP_THREADS_BIND"] = cores
                prefix = ("taskset", "-c", cores)
            args = ["--model-path", str(model_dir), "--enable-cache-report", *system.args]
            replicas.append(Server(f"{system.name}-{tag}-r{i}", args, env, log_dir,
                                   prefix=prefix))
        for replica in replicas:
            replica.wait_ready()
        fleet = _front(system, [r.url for r in replicas], model_dir, log_dir, tag)
        fleet.replicas = replicas
        return fleet
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise


def _front(system: System, urls: list[str], model_dir: Path, log_dir: Path, tag: str) -> Fleet:
    if system.front == "router":
        router = RouterProcess(urls, log_dir, "--log-level", "info", *system.front_args,
                               name=f"router-{tag}")
        router.wait_ready(len(urls))
        return Fleet(router.url, [], router, router.url, "router")
    port = free_port()
    log = open(log_dir / f"{system.front}-{tag}.log", "w")
    if system.front == "smg":
        cmd = [str(SMG), "launch", "--host", "127.0.0.1", "--port", str(port),
               "--worker-urls", *urls, "--policy", "cache_aware",
               "--model-alias", f"default={model_dir}", "--prometheus-port", str(free_port()),
               *SMG_CPU_FLAGS]
    elif system.front == "proxy":
        cmd = [str(PROXY), "--backend-type", "sglang", "--backends", ",".join(urls),
               "--router", "tr", "--host", "127.0.0.1", "--port", str(port)]
    else:
        raise ValueError(f"unknown front {system.front!r}")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    fleet = Fleet(url, [], proc, url, system.front, [log])
    try:
        _wait_serving(url, proc)
    except BaseException:
        fleet.stop()
        raise
    return fleet


def _need(path: Path) -> None:
    if not path.exists():
        raise SystemExit(f"{path} is missing: run benchmarks/fleet_baselines.sh first")


def _wait_serving(url: str, proc) -> None:
    """Until a one-token chat call through the front answers 200."""
    deadline = time.monotonic() + FRONT_READY_S
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1}
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the front at {url} exited ({proc.returncode})")
        try:
            if httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise RuntimeError(f"the front at {url} did not serve in {FRONT_READY_S} s")


async def kv_usage(http: httpx.AsyncClient, urls: list[str]) -> list[float | None]:
    """Each replica's ``sglang:token_usage`` (pool fraction held by running calls), all
    replicas asked at once so that one sample is one instant."""
    return list(await asyncio.gather(*(_token_usage(http, url) for url in urls)))


async def _token_usage(http: httpx.AsyncClient, url: str) -> float | None:
    try:
        text = (await http.get(f"{url}/metrics", timeout=10)).text
    except httpx.HTTPError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("sglang:token_usage{") or line.startswith(
                  "sglang:token_usage ")]
    return values[0] if values else None


def imbalance(samples: list[list[float | None]]) -> dict:
    """Time-mean of |u_A - u_B| (two replicas; max - min for more: the paper's measure, which
    on a CPU swings with which calls happen to run at each sample), each one's mean, the gap
    between those means (``kv_mean_gap``: a lasting skew of the placement), and, for two
    replicas, ``kv_imbalance_independent``: the mean |u_A - u_B| over every pair of A's and B's
    samples, what the measure reads for two replicas as loaded whose calls are independent of
    each other (the floor a placement that only evens out the load can reach)."""
    rows = [s for s in samples if s and all(v is not None for v in s)]
    if not rows:
        return {"kv_imbalance": None, "kv_usage_mean": None, "kv_mean_gap": None,
                "kv_imbalance_independent": None, "samples": 0}
    spread = [max(r) - min(r) for r in rows]
    means = [round(sum(r[i] for r in rows) / len(rows), 4) for i in range(len(rows[0]))]
    return {"kv_imbalance": round(sum(spread) / len(spread), 4), "kv_usage_mean": means,
            "kv_mean_gap": round(max(means) - min(means), 4),
            "kv_imbalance_independent": _independent(rows), "samples": len(rows)}


def _independent(rows: list[list[float]]) -> float | None:
    if len(rows[0]) != 2:
        return None
    a, b = [r[0] for r in rows], [r[1] for r in rows]
    return round(sum(abs(x - y) for x in a for y in b) / (len(a) * len(b)), 4)


async def router_view(http: httpx.AsyncClient, url: str) -> dict | None:
    """Our router's ``GET /router/replicas`` (each replica's view age and poll latencies)."""
    try:
        return (await http.get(f"{url}/router/replicas", timeout=10)).json()
    except Exception:  # noqa: BLE001 - a figure, not the run
        return None


def staleness(samples: list[dict | None]) -> dict:
    """How old the router's view of each replica was when sampled (once a second in the
    window: p50, p99, max over every replica's samples; a sample that did not come back is
    None) and its polls' latencies over its life (the worst replica's p50 and p99, from the
    last sample that came back)."""
    answered = [s for s in samples if s]
    ages = sorted(r["view_age_s"] for s in answered for r in s["replicas"]
                  if r.get("view_age_s") is not None)
    last = answered[-1]["replicas"] if answered else []
    polls = [r for r in last if r.get("poll_p50_s") is not None]

    def at(q: float) -> float | None:
        return ages[min(len(ages) - 1, int(q * len(ages)))] if ages else None

    return {"router_view_age_p50_s": at(0.5), "router_view_age_p99_s": at(0.99),
            "router_view_age_max_s": ages[-1] if ages else None,
            "router_poll_p50_s": max((r["poll_p50_s"] for r in polls), default=None),
            "router_poll_p99_s": max((r["poll_p99_s"] for r in polls), default=None)}
