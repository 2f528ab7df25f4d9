"""Selective offload of paused programs' KV (glue for ``policy.offload``).

``Offloader`` belongs to the ``ProgramRuntime``. At cache build (HiCache on,
``--thunderagent-offload auto``) it measures the host-to-device link (or takes it from the
flags) and logs the cost model. When a program is paused, the model chooses keep, offload or
drop for the device KV it holds alone; offload demotes exactly those of its nodes that can
leave the device (its own, unlocked, with nothing of another's below them) through SGLang's
own eviction walk, with the program's nodes ranked first and the walk's quota equal to their
tokens, so no other program's KV moves; drop also frees their host copies. When it resumes,
what it offloaded is loaded back at once (prefetch), before its next call needs it. Prefill
batches are timed to know the recompute rate.

With ``--thunderagent-tool-offload on`` the same moves are also decided when a program that
is not paused starts acting (``at_boundary``: its call finished, or a tool start hint named
its tool), by ``policy.offload.decide_at_boundary``. An offload there is loaded back at the
predicted return less the transfer (``--thunderagent-prefetch predicted``; at once on a tool
end hint), from a heap of due times read at each loop tick. Each such prefetch ends counted
as ``on_time``, ``early`` (the call came later than the prediction's spread after the load),
``late`` (the call came first: SGLang loaded it), ``wasted`` (evicted again, paused, or ended
before its call), ``cancelled`` (paused or ended before the load) or ``empty`` (nothing was
left on the host to load).
"""

from __future__ import annotations

import time

import torch
from sglang.srt.mem_cache.base_prefix_cache import EvictParams
from sglang.srt.mem_cache.hicache_storage import PoolName

from thunderagent_sglang.engine.logs import get_logger
from thunderagent_sglang.engine.program_tree import lengths
from thunderagent_sglang.policy.offload import (
    Boundary, Choice, CostModel, KvDecision, RateMeter, decide, decide_at_boundary, prefetch_due,
    prefetch_outcome)
from thunderagent_sglang.policy.prefetch import Prefetch, PrefetchQueue
from thunderagent_sglang.program.record import Phase, Status

_PROBE_BYTES = 64 << 20  # bandwidth probe size
_SAMPLE_EVERY = 16  # after the first _FIRST_SAMPLES, time one prefill batch in this many
_FIRST_SAMPLES = 8


class Offloader:
    def __init__(self, runtime, cfg):
        self.runtime = runtime
        self.cfg = cfg
        self.cache = None
        self.link: tuple[int, float, float] | None = None  # bytes/token, bytes/s, s per load
        self.cuda = False
        self.meter = RateMeter()
        self.agreed: dict | None = None  # rank 0's link and rate (tensor parallelism)
        self.extends = 0
        self.prefetches = PrefetchQueue()  # KV offloaded at tool boundaries
        self.stats_ = {"decisions": {d.value: 0 for d in KvDecision},
                       "tool_decisions": {d.value: 0 for d in KvDecision},
                       "offloaded_tokens": 0, "dropped_tokens": 0, "prefetched_tokens": 0}

    def attach(self, cache) -> None:
        """Measure (or take from the flags) the link of a HiCache-enabled cache; log the model."""
        cfg = self.cfg
        self.cache = cache
        if cfg.offload == "off" or getattr(cache, "cache_controller", None) is None:
            get_logger().info("ThunderAgent: selective KV offload off (%s)",
                              "--thunderagent-offload off" if cfg.offload == "off"
                              else "no host tier")
            return
        device_pool = cache.token_to_kv_pool_allocator.get_kvcache()
        bytes_per_token = kv_bytes_per_token(device_pool)
        self.cuda = torch.device(device_pool.device).type == "cuda"
        measured = measure_link(device_pool.device, bytes_per_token, device_pool.layer_num)
        bandwidth = (cfg.offload_bandwidth_gbps * 1e9 if cfg.offload_bandwidth_gbps
                     else measured[0])
        latency = cfg.offload_latency_s if cfg.offload_latency_s is not None else measured[1]
        self.link = (bytes_per_token, bandwidth, latency)
        get_logger().info(
            "ThunderAgent: selective KV offload on; host link measured %.2f GB/s, %.0f us per "
            "transfer; cost model: %s", measured[0] / 1e9, measured[1] * 1e6,
            self.cost_model().describe())

    def consensus_inputs(self) -> dict:
        """This rank's measures, which rank 0 sends every rank each step (tp_consensus)."""
        return {"link": self.link, "rate": self.meter.rate()}

    def adopt(self, inputs: dict) -> None:
        """Decide by rank 0's measures from now on (every rank, rank 0 included)."""
        self.agreed = inputs

    def cost_model(self) -> CostModel | None:
        link = self.link if self.agreed is None else self.agreed["link"]
        if link is None:
            return None
        bytes_per_token, bandwidth, latency = link
        rate = self.recompute_rate()
        return CostModel(bytes_per_token, bandwidth, latency, rate)

    def recompute_rate(self) -> float | None:
        """Prefill tokens per second: configured, else measured (with a host tier or admission
        by feedback; rank 0's under tensor parallelism), else None."""
        measured = self.meter.rate() if self.agreed is None else self.agreed["rate"]
        return self.cfg.recompute_rate or measured

    def time_prefill(self, original, scheduler, batch, *args, **kwargs):
        """AROUND ``Scheduler.run_batch``: time a sample of prefill batches (recompute rate:
        the offload cost model's, and ``--thunderagent-admission feedback``'s)."""
        wanted = self.link is not None or self.cfg.admission == "feedback"
        if not wanted or self.cfg.recompute_rate or not batch.forward_mode.is_extend():
            return original(scheduler, batch, *args, **kwargs)  # nothing to measure: no cost
        tokens = batch.extend_num_tokens
        if not tokens or not self._sampled():
            return original(scheduler, batch, *args, **kwargs)
        start = time.perf_counter()
        result = original(scheduler, batch, *args, **kwargs)
        if self.cuda:
            torch.cuda.synchronize()
        self.meter.add(tokens, time.perf_counter() - start)
        return result

    def _sampled(self) -> bool:
        self.extends += 1
        return self.extends <= _FIRST_SAMPLES or self.extends % _SAMPLE_EVERY == 0

    # ---- pause and resume ------------------------------------------------------------------

    def on_pause(self, program) -> Choice | None:
        """Choose and carry out keep/offload/drop for a program just paused."""
        pid = program.program_id
        if self.cache is None or self.runtime.tree is None:
            return None
        carried = self.prefetches.end(pid, "wasted", "cancelled")
        own_device, device, unbacked = self._own(pid)
        choice = decide(self.cost_model(), device, unbacked, self._host_free())
        moved_before = program.tool_kv if carried is None or carried.loaded_at is None else None
        if not device and choice.decision is KvDecision.KEEP and moved_before in (
                KvDecision.OFFLOAD.value, KvDecision.DROP.value):  # an offload loads at resume
            choice = Choice(KvDecision(moved_before), f"{moved_before} at its tool boundary")
        self.runtime.table.set_kv_decision(pid, choice.decision.value)
        self.stats_["decisions"][choice.decision.value] += 1
        moved = 0
        if choice.decision is not KvDecision.KEEP and device:
            moved = self._evict_own(pid, device, choice.decision)
        get_logger().info("ThunderAgent: program %s paused: KV %s (%s); %d of %d own device "
                          "tokens moved (%d movable: unlocked, nothing of another's below)",
                          pid, choice.decision.value, choice.reason, moved, own_device, device)
        return choice

    def _own(self, pid: str) -> tuple[int, int, int]:
        """The program's own device tokens, the movable part of them, and of that the part
        not yet copied to the host."""
        tree = self.runtime.tree
        nodes = tree.own_nodes(pid)
        movable = tree.movable(nodes)
        return (sum(lengths(n)[0] for n in nodes), sum(lengths(n)[0] for n in movable),
                sum(d for d, h in map(lengths, movable) if h < d))

    # ---- tool boundaries ---------------------------------------------------------------------

    def at_boundary(self, program) -> Choice | None:
        """A program that is not paused starts acting, or names its tool: keep, offload or drop
        its own device KV (``decide_at_boundary``); an offload is loaded back on time."""
        pid = program.program_id
        model = self.cost_model()
        if not self.cfg.tool_offload or model is None or self.runtime.tree is None:
            return None
        pending = self.prefetches.get(pid)
        if pending is not None:  # offloaded in this phase already: its tool may be known now
            if pending.loaded_at is None and program.tool_predicted_s is not None:
                self._schedule(pid, pending, model, program)
            return None
        if program.tool_kv in (KvDecision.OFFLOAD.value, KvDecision.DROP.value):
            return None  # moved already in this acting phase
        predicted, least = program.tool_predicted_s, 2 * self.cfg.tick_s
        contended = self.runtime.scheduler.contended()
        # the tree is walked only when the cheap conditions leave a choice to make
        walk = predicted is not None and predicted >= least and contended
        own_device, device, unbacked = self._own(pid) if walk else (0, 0, 0)
        choice = decide_at_boundary(model, Boundary(
            unique_tokens=device, unbacked_tokens=unbacked, host_free_tokens=self._host_free(),
            predicted_s=predicted, stall_tokens=int(self.cache.protected_size()),
            contended=contended, min_predicted_s=least))
        self.runtime.table.set_tool_kv(pid, choice.decision.value)
        self.stats_["tool_decisions"][choice.decision.value] += 1
        moved = 0
        if choice.decision is not KvDecision.KEEP:
            moved = self._evict_own(pid, device, choice.decision)
        if choice.decision is KvDecision.OFFLOAD and moved and self.cfg.prefetch == "predicted":
            self._schedule(pid, Prefetch(moved), model, program)
        get_logger().debug("ThunderAgent: program %s acting: KV %s (%s); %d of %d own device "
                           "tokens moved", pid, choice.decision.value, choice.reason, moved,
                           own_device)
        return choice

    def _schedule(self, pid: str, entry: Prefetch, model: CostModel, program) -> None:
        median = program.tool_predicted_s or 0.0
        spread = max((program.tool_predicted_p90_s or median) - median, self.cfg.tick_s)
        self.prefetches.schedule(
            pid, entry, prefetch_due(model, entry.tokens, program.phase_since, median), spread)

    def tool_ended(self, pid: str) -> None:
        """A tool end hint: its offloaded KV is wanted now."""
        entry = self.prefetches.get(pid)
        if entry is not None and entry.loaded_at is None:
            self._prefetch(pid, entry)

    def run_due(self, now: float) -> None:
        """Load back every boundary offload whose time has come (each loop tick)."""
        for pid, entry in self.prefetches.due_now(now):
            self._prefetch(pid, entry)

    def _prefetch(self, pid: str, entry: Prefetch) -> None:
        program = self.runtime.table.live_program(pid)
        if (program is None or program.status is not Status.ACTIVE
                or program.phase is not Phase.ACTING):
            return  # paused (loaded at resume), or its call came: settled there
        loaded = self._load_back(pid)
        if not loaded:
            self.prefetches.end(pid, "empty", "empty")
            return
        entry.loaded_at = self.runtime.clock()
        entry.resident_after = self.runtime.residency.resident_tokens(pid)
        get_logger().debug("ThunderAgent: program %s: %d tokens loaded back before its "
                           "predicted return", pid, loaded)

    def call_came(self, pid: str) -> None:
        """The program's next call arrived (or was held): how its prefetch served it."""
        entry = self.prefetches.get(pid)
        if entry is None:
            return
        if entry.loaded_at is None:
            self.prefetches.end(pid, "late", "late")
            return
        outcome = prefetch_outcome(entry.loaded_at, self.runtime.clock(),
                                   self.runtime.residency.resident_tokens(pid),
                                   entry.resident_after, entry.spread_s)
        self.prefetches.end(pid, outcome, outcome)

    def forget(self, pid: str) -> None:
        """The program ended."""
        self.prefetches.end(pid, "wasted", "cancelled")

    def _host_pool(self):
        group = getattr(self.cache, "host_pool_group", None)
        return group.get_pool(PoolName.KV) if group is not None else None

    def _host_free(self) -> int:
        pool = self._host_pool()
        return pool.available_size() if pool is not None else 0

    def host_tokens(self) -> int:
        """The host tier's KV capacity in tokens (0 without one)."""
        pool = self._host_pool()
        return int(getattr(pool, "size", 0) or 0) if pool is not None else 0

    def _evict_own(self, pid: str, device_tokens: int, decision: KvDecision) -> int:
        """Free exactly the program's movable device KV (for a drop, its host copies too)."""
        runtime, cache = self.runtime, self.cache
        before = runtime.residency.resident_tokens(pid)
        runtime.evict_first = pid
        try:
            cache.evict(EvictParams(num_tokens=device_tokens))
            if decision is KvDecision.DROP:
                host = sum(lengths(n)[1] for n in runtime.tree.own_nodes(pid))
                if host:
                    cache.evict_host(host)
        finally:
            runtime.evict_first = None
        moved = before - runtime.residency.resident_tokens(pid)
        key = "dropped_tokens" if decision is KvDecision.DROP else "offloaded_tokens"
        self.stats_[key] += moved
        return moved

    def on_resume(self, program_id: str, decision: str | None) -> int:
        """Load back what a resumed program offloaded (prefetch); the tokens loaded."""
        if decision != KvDecision.OFFLOAD.value or self.cache is None:
            return 0
        loaded = self._load_back(program_id)
        get_logger().info("ThunderAgent: program %s resumed: %d tokens loaded back from the "
                          "host tier", program_id, loaded)
        return loaded

    def _load_back(self, program_id: str) -> int:
        """Load the program's host-only KV back to the device now; the tokens loaded."""
        cache, residency = self.cache, self.runtime.residency
        before = residency.resident_tokens(program_id)
        for node_id in residency.heads(program_id).values():
            cache.load_back(node_id)
        _finish_loads(cache)
        loaded = residency.resident_tokens(program_id) - before
        self.stats_["prefetched_tokens"] += loaded
        return loaded

    def stats(self) -> dict:
        model = self.cost_model()
        return {**self.stats_, "decisions": dict(self.stats_["decisions"]),
                "tool_decisions": dict(self.stats_["tool_decisions"]),
                "prefetches": dict(self.prefetches.outcomes),
                "prefetches_pending": len(self.prefetches),
                "cost_model": None if model is None else model.describe()}


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
