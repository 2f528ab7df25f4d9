"""Selective offload of paused programs' KV (glue for ``policy.offload``).

At cache build (HiCache on, ``--thunderagent-offload auto``) the host-to-device
link is measured (or taken from the flags) and logged. When a program is
paused, the cost model chooses keep, offload or drop for the device KV it
holds alone; offload demotes those nodes to the host tier (SGLang's own
eviction walk, with the program's nodes ranked first), drop frees them on both
tiers. When it resumes, what it offloaded is loaded back at once (prefetch),
before its next request needs it. Prefill batches are timed to know the
recompute rate.
"""

from __future__ import annotations

import time

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.hicache_storage import PoolName

from thunderagent_sglang.engine import program_tree
from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine.program_tree import RESIDENCY
from thunderagent_sglang.policy.offload import Choice, CostModel, KvDecision, RateMeter, decide

_PROBE_BYTES = 64 << 20  # bandwidth probe size
_SAMPLE_EVERY = 16  # after the first _FIRST_SAMPLES, time one prefill batch in this many
_FIRST_SAMPLES = 8
_state: dict = {"cache": None, "link": None, "rate": None, "meter": RateMeter(), "extends": 0}
STATS = {"decisions": {d.value: 0 for d in KvDecision},
         "offloaded_tokens": 0, "dropped_tokens": 0, "prefetched_tokens": 0}


def attach(cache, cfg) -> None:
    """Measure (or take from ``cfg``) the link of a HiCache-enabled cache; log the model."""
    _state["cache"] = cache
    _state["link"] = None
    _state["rate"] = cfg.recompute_rate
    if cfg.offload == "off" or getattr(cache, "cache_controller", None) is None:
        get_logger().info("ThunderAgent: selective KV offload off (%s)",
                          "--thunderagent-offload off" if cfg.offload == "off" else "no host tier")
        return
    device_pool = cache.token_to_kv_pool_allocator.get_kvcache()
    bytes_per_token = kv_bytes_per_token(device_pool)
    _state["cuda"] = torch.device(device_pool.device).type == "cuda"
    measured = measure_link(device_pool.device, bytes_per_token, device_pool.layer_num)
    bandwidth = cfg.offload_bandwidth_gbps * 1e9 if cfg.offload_bandwidth_gbps else measured[0]
    latency = cfg.offload_latency_s if cfg.offload_latency_s is not None else measured[1]
    _state["link"] = (bytes_per_token, bandwidth, latency)
    get_logger().info(
        "ThunderAgent: selective KV offload on; host link measured %.2f GB/s, %.0f us per "
        "transfer; cost model: %s", measured[0] / 1e9, measured[1] * 1e6, cost_model().describe())


def kv_bytes_per_token(device_pool) -> int:
    k_bytes, v_bytes = device_pool.get_kv_size_bytes()
    return round((k_bytes + v_bytes) / device_pool.k_buffer[0].shape[0])


def measure_link(device, bytes_per_token: int, layers: int) -> tuple[float, float]:
    """(host -> device bytes/s over a 64 MiB copy, seconds of one page-sized copy per layer
    times the layers), best of three: HiCache loads back layer by layer."""
    cuda = torch.device(device).type == "cuda"
    src = torch.empty(_PROBE_BYTES, dtype=torch.uint8, pin_memory=cuda).fill_(1)
    dst = torch.empty(_PROBE_BYTES, dtype=torch.uint8, device=device)
    small = max(1, bytes_per_token // max(1, layers)) * 16
    big_s = min(_timed(lambda: dst.copy_(src, non_blocking=cuda), cuda) for _ in range(3))
    one_s = min(_timed(lambda: dst[:small].copy_(src[:small], non_blocking=cuda), cuda)
                for _ in range(3))
    return _PROBE_BYTES / big_s, one_s * layers


def _timed(fn, cuda: bool) -> float:
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return max(time.perf_counter() - start, 1e-9)


def cost_model() -> CostModel | None:
    if _state["link"] is None:
        return None
    bytes_per_token, bandwidth, latency = _state["link"]
    rate = _state["rate"] or _state["meter"].rate()
    return CostModel(bytes_per_token, bandwidth, latency, rate)


def time_prefill(original, scheduler, batch, *args, **kwargs):
    """AROUND ``Scheduler.run_batch``: time a sample of prefill batches (recompute rate)."""
    if _state["link"] is None or _state["rate"] or not batch.forward_mode.is_extend():
        return original(scheduler, batch, *args, **kwargs)  # nothing to measure: no cost
    tokens = batch.extend_num_tokens
    if not tokens or not _sampled():
        return original(scheduler, batch, *args, **kwargs)
    cuda = _state.get("cuda", False)
    start = time.perf_counter()
    result = original(scheduler, batch, *args, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    _state["meter"].add(tokens, time.perf_counter() - start)
    return result


def _sampled() -> bool:
    _state["extends"] += 1
    n = _state["extends"]
    return n <= _FIRST_SAMPLES or n % _SAMPLE_EVERY == 0


def own_nodes(program_id: str) -> list:
    """The tree nodes tagged by this program alone, leaf first."""
    tree = program_tree.tree()
    if tree is None:
        return []
    seen, nodes = set(), []
    for node_id in RESIDENCY.heads(program_id).values():
        for node in program_tree.path_to_root(tree, tree.node_by_id(node_id)):
            if node.id not in seen and RESIDENCY.tags(node.id) == frozenset((program_id,)):
                seen.add(node.id)
                nodes.append(node)
    return nodes


def on_pause(program) -> Choice:
    """Choose and carry out keep/offload/drop for a program just paused."""
    pid = program.program_id
    nodes = own_nodes(pid)
    device = sum(program_tree.lengths(n)[0] for n in nodes)
    unbacked = sum(d for d, h in map(program_tree.lengths, nodes) if h < d)
    choice = decide(cost_model(), device, unbacked, _host_free())
    program.kv_decision = choice.decision.value
    STATS["decisions"][choice.decision.value] += 1
    moved = 0
    if choice.decision is not KvDecision.KEEP:
        moved = _evict_own(pid, device, KvDecision.DROP if choice.decision is KvDecision.DROP
                           else KvDecision.OFFLOAD)
    get_logger().info("ThunderAgent: program %s paused: KV %s (%s); %d of %d own device tokens "
                      "moved", pid, choice.decision.value, choice.reason, moved, device)
    return choice


def _host_free() -> int:
    group = getattr(_state["cache"], "host_pool_group", None)
    pool = group.get_pool(PoolName.KV) if group is not None else None
    return pool.available_size() if pool is not None else 0


def _evict_own(pid: str, device_tokens: int, decision: KvDecision) -> int:
    """Free the program's own device KV (and for a drop its host copies), its nodes first."""
    cache = _state["cache"]
    before = RESIDENCY.resident_tokens(pid), RESIDENCY.host_tokens(pid)
    with program_tree.evicting_first(pid):
        cache.evict(EvictParams(num_tokens=device_tokens))
        if decision is KvDecision.DROP:
            host = sum(program_tree.lengths(n)[1] for n in own_nodes(pid))
            if host:
                cache.evict_host(host)
    moved = before[0] - RESIDENCY.resident_tokens(pid)
    if decision is KvDecision.DROP:
        STATS["dropped_tokens"] += moved
    else:
        STATS["offloaded_tokens"] += moved
    return moved


def on_resume(program_id: str, decision: str | None) -> int:
    """Load back what a resumed program offloaded (prefetch); the tokens loaded."""
    cache = _state["cache"]
    if decision != KvDecision.OFFLOAD.value or cache is None:
        return 0
    before = RESIDENCY.resident_tokens(program_id)
    for node_id in RESIDENCY.heads(program_id).values():
        cache.load_back(node_id)
    _finish_loads(cache)
    loaded = RESIDENCY.resident_tokens(program_id) - before
    STATS["prefetched_tokens"] += loaded
    get_logger().info("ThunderAgent: program %s resumed: %d tokens loaded back from the host "
                      "tier", program_id, loaded)
    return loaded


def _finish_loads(cache) -> None:
    """Run the loads ``load_back`` queued, wait for them, and release their locks.

    SGLang starts queued loads only when its next prefill batch forms. A resumed program may
    never send another call (released at once), or the pool's free room may be exactly what
    the queued load holds locked: the loaded nodes would then stay locked for good and the
    pool would wedge. The copy is short (the link was measured at start-up), so it is done here.
    """
    if cache.ready_to_load_host_cache() < 0:
        return  # nothing was queued
    cache.cache_controller.ack_load_queue[-1].finish_event.synchronize()
    cache.loading_check()


def stats() -> dict:
    model = cost_model()
    return {**STATS, "decisions": dict(STATS["decisions"]),
            "cost_model": None if model is None else model.describe()}
