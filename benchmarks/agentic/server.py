"""Starting a system's server, and what is read from it besides the calls."""

from __future__ import annotations

import asyncio
import platform
from importlib import metadata
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.agentic.systems import System
from tests.integration.server import REPO, Server

# Counters read from our GET /metrics (absent on plain SGLang).
OUR_SERIES = ("thunderagent_pauses_total", "thunderagent_resumes_total",
              "thunderagent_kv_decisions_total", "thunderagent_kv_moved_tokens_total",
              "thunderagent_missed_tokens_total", "thunderagent_tool_kv_decisions_total",
              "thunderagent_prefetches_total")
# SGLang's own, with --enable-metrics (``run --sglang-metrics``): where the scheduler's time goes.
SGLANG_SERIES = ("sglang:scheduler_stage_seconds_total", "sglang:forward_execution_seconds_total",
                 "sglang:scheduler_process_cpu_seconds_total", "sglang:scheduler_idle_seconds_total")
KEPT_LABELS = ("category", "decision", "event", "cause", "outcome")


def start(system: System, model_dir: Path, log_dir: Path, tag: str, sglang_metrics: bool = False) -> Server:
    """The system's server on ``model_dir``, ready; its log in ``log_dir``."""
    args = ["--model-path", str(model_dir), "--enable-cache-report", *system.args]
    if sglang_metrics:
        args.append("--enable-metrics")
    # The idle leak check and residency recount are test aids: keep them off here.
    env = {**system.env, "THUNDERAGENT_DEBUG_MEMCHECK": "0"}
    log_dir.mkdir(parents=True, exist_ok=True)
    server = Server(f"{system.name}-{tag}", args, env, log_dir)
    try:
        return server.wait_ready()
    except BaseException:
        server.stop()
        raise


def scheduler_process(server: Server) -> psutil.Process | None:
    for pid in server.descendants():
        try:
            proc = psutil.Process(pid)
            if "sglang::scheduler" in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    return None


def cpu_seconds(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    times = proc.cpu_times()
    return times.user + times.system


AGE_SERIES = "thunderagent_stats_age_seconds"
FRESH_S = 1.0  # our figures this old at most: the scheduler answered for this sample
FRESH_WITHIN_S = 60.0


async def sample_metrics(http: httpx.AsyncClient, url: str) -> dict[str, float]:
    """Our counters (and SGLang's scheduler-time series, when on) from ``GET /metrics``,
    keyed like ``name{label="v"}``; {} if none. Our server serves its scheduler's last
    figures when the scheduler is busy (with their age): asked again until they are fresh
    (up to a minute), so a window's end is not read as its start."""
    deadline = time.monotonic() + FRESH_WITHIN_S
    while True:
        out = await _metrics_once(http, url)
        if out.get(AGE_SERIES, 0.0) <= FRESH_S or time.monotonic() > deadline:
            out.pop(AGE_SERIES, None)
            return out
        await asyncio.sleep(0.2)


async def _metrics_once(http: httpx.AsyncClient, url: str) -> dict[str, float]:
    try:
        reply = await http.get(f"{url}/metrics", timeout=30)
    except httpx.HTTPError:
        return {}
    if reply.status_code != 200:
        return {}
    out = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            if sample.name in OUR_SERIES or sample.name in SGLANG_SERIES \
                    or sample.name == AGE_SERIES:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items())
                                  if k in KEPT_LABELS)
                key = sample.name + (f"{{{labels}}}" if labels else "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def versions() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except OSError:
            return ""

    import thunderagent_sglang
    return {"thunderagent_sglang": thunderagent_sglang.__version__, "sglang": metadata.version("sglang"),
            "torch": metadata.version("torch"), "python": platform.python_version(),
            "git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain"))}


def machine() -> dict:
    return {"cpus": psutil.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "processor": platform.processor(),
            "load_average": [round(x, 2) for x in psutil.getloadavg()], "argv": sys.argv}
