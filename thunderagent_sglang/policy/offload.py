"""Keep, offload or drop a paused program's KV: a pure cost model.

A paused program will need its KV again when it resumes. What it holds alone on
the device (its *unique* tokens; a prefix shared with live programs stays where
it is) can

- **offload**: go to the host tier and be loaded back at resume. Cost: the
  load-back, ``latency + tokens * bytes_per_token / bandwidth``. Under HiCache's
  write-through policy the KV was copied to the host when it was inserted;
  under write-back (the benchmarks' setting) the part not yet on the host is
  written now, off the critical path of the running calls; either way the
  load-back at resume is the cost that delays the program.
- **drop**: be freed on both tiers and recomputed at resume. Cost:
  ``tokens / recompute_rate``, the prefill rate measured on this server (it
  includes the attention over the context at the sizes actually served).
- **keep**: stay on the device, first in line for eviction. Chosen when there
  is no host tier, offload is off, the host tier has no room for the part not
  yet copied, or the program holds nothing of its own.

Drop when recomputing is no dearer than the transfer (small programs, where the
fixed latency of a transfer dominates); otherwise offload when the host has
room. Before any prefill has been measured the rate is unknown and the model
offloads (it never throws away KV on a guess).

**At a tool boundary** (``decide_at_boundary``: a program that is not paused
starts acting) the question is different: keeping its KV for the predicted
tool time denies that memory to others, which costs something only while the
pool is contended. The three choices are compared in memory-time (token-
seconds), as InferCept does: keep holds ``tokens x predicted seconds``; offload
holds the program's tokens and stalls the running calls' tokens for the
write to the host (its part not yet there) and the load-back; drop does the
same for the recompute. The load-back is timed to the predicted return
(``prefetch_due``), which needs a prediction of at least two scheduler ticks:
below that the KV is kept.
"""

from __future__ import annotations

import dataclasses
import enum


class KvDecision(str, enum.Enum):
    KEEP = "keep"
    OFFLOAD = "offload"
    DROP = "drop"


@dataclasses.dataclass(frozen=True)
class CostModel:
    bytes_per_token: int  # KV bytes of one token, all layers
    bandwidth_bytes_per_s: float  # host -> device copy
    latency_s: float  # fixed cost of one load-back
    recompute_tokens_per_s: float | None  # prefill rate; None until measured

    def transfer_seconds(self, tokens: int) -> float:
        return self.latency_s + tokens * self.bytes_per_token / self.bandwidth_bytes_per_s

    def write_seconds(self, tokens: int) -> float:
        """Device -> host copy of ``tokens`` (the link taken as symmetric); 0 for nothing."""
        return 0.0 if tokens <= 0 else self.transfer_seconds(tokens)

    def recompute_seconds(self, tokens: int) -> float | None:
        if not self.recompute_tokens_per_s:
            return None
        return tokens / self.recompute_tokens_per_s

    def break_even_tokens(self) -> float | None:
        """Below this many tokens recomputing is cheaper than the transfer (None: never or
        unknown)."""
        rate = self.recompute_tokens_per_s
        if not rate:
            return None
        per_token_gap = 1.0 / rate - self.bytes_per_token / self.bandwidth_bytes_per_s
        if per_token_gap <= 0:
            return None  # recomputing is always cheaper: every size drops
        return self.latency_s / per_token_gap

    def describe(self) -> str:
        rate = self.recompute_tokens_per_s
        even = self.break_even_tokens()
        return (f"bandwidth {self.bandwidth_bytes_per_s / 1e9:.2f} GB/s, latency "
                f"{self.latency_s * 1e6:.0f} us, {self.bytes_per_token} B/token, recompute "
                + (f"{rate:.0f} tokens/s" if rate else "not measured yet")
                + ("" if even is None else f", break-even {even:.0f} tokens"))


@dataclasses.dataclass(frozen=True)
class Choice:
    decision: KvDecision
    reason: str


def decide(model: CostModel | None, unique_tokens: int, unbacked_tokens: int,
           host_free_tokens: int) -> Choice:
    """What to do with a paused program's own device KV.

    ``model`` None: offload is off or there is no host tier. ``unbacked_tokens``:
    the part of it not yet copied to the host (needs host room to offload).
    """
    if model is None:
        return Choice(KvDecision.KEEP, "no host tier or offload off")
    if unique_tokens <= 0:
        return Choice(KvDecision.KEEP, "holds no KV of its own on the device")
    transfer = model.transfer_seconds(unique_tokens)
    recompute = model.recompute_seconds(unique_tokens)
    if recompute is not None and recompute <= transfer:
        return Choice(KvDecision.DROP, f"recompute {recompute * 1e3:.3f} ms <= load-back "
                                       f"{transfer * 1e3:.3f} ms for {unique_tokens} tokens")
    if unbacked_tokens > host_free_tokens:
        return Choice(KvDecision.KEEP, f"host tier has room for {host_free_tokens} tokens, "
                                       f"{unbacked_tokens} needed")
    shown = "unknown" if recompute is None else f"{recompute * 1e3:.3f} ms"
    return Choice(KvDecision.OFFLOAD, f"load-back {transfer * 1e3:.3f} ms < recompute {shown} "
                                      f"for {unique_tokens} tokens")


@dataclasses.dataclass(frozen=True)
class Boundary:
    """What the boundary decision reads about a program that starts acting."""

    unique_tokens: int  # its own movable device KV
    unbacked_tokens: int  # of that, the part not yet copied to the host
    host_free_tokens: int
    predicted_s: float | None  # the tool-duration model's median for this acting phase
    stall_tokens: int  # KV of the calls in the engine, which wait while copies run
    contended: bool  # the active programs' demand exceeds what the device pool holds
    min_predicted_s: float  # shorter predictions keep (the prefetch could not be timed)


def decide_at_boundary(model: CostModel | None, b: Boundary) -> Choice:
    """Keep, offload or drop a program's own device KV as it starts acting: the least
    memory-time of the three (see the module's docstring)."""
    if model is None:
        return Choice(KvDecision.KEEP, "no host tier or offload off")
    if b.predicted_s is None:
        return Choice(KvDecision.KEEP, "no prediction of its tool time yet")
    if b.predicted_s < b.min_predicted_s:
        return Choice(KvDecision.KEEP, f"predicted back in {b.predicted_s:.2f} s, under "
                                       f"{b.min_predicted_s:.2f} s")
    if not b.contended:
        return Choice(KvDecision.KEEP, "the pool is not contended: keeping denies no one")
    if b.unique_tokens <= 0:
        return Choice(KvDecision.KEEP, "holds no KV of its own on the device")
    keep = b.unique_tokens * b.predicted_s
    held = b.unique_tokens + b.stall_tokens
    costs: dict[KvDecision, float] = {}
    if b.unbacked_tokens <= b.host_free_tokens:
        copies = model.write_seconds(b.unbacked_tokens) + model.transfer_seconds(b.unique_tokens)
        costs[KvDecision.OFFLOAD] = held * copies
    recompute = model.recompute_seconds(b.unique_tokens)
    if recompute is not None:
        costs[KvDecision.DROP] = held * recompute
    best = min(costs, key=costs.__getitem__) if costs else None
    if best is None or costs[best] >= keep:
        other = "" if best is None else f" against {best.value} {costs[best]:.0f}"
        return Choice(KvDecision.KEEP, f"keep {keep:.0f} token-s{other}")
    return Choice(best, f"{best.value} {costs[best]:.0f} token-s against keep {keep:.0f} "
                        f"({b.unique_tokens} tokens, back in {b.predicted_s:.2f} s)")


def prefetch_due(model: CostModel, tokens: int, since: float, predicted_s: float) -> float:
    """When to start loading an offloaded program's KV back: its predicted return less the
    transfer (at once when the transfer is the longer)."""
    return since + max(0.0, predicted_s - model.transfer_seconds(tokens))


def prefetch_outcome(loaded_at: float, arrived_at: float, kept_tokens: int,
                     loaded_tokens: int, spread_s: float) -> str:
    """How a prefetch served the call that came after it: ``wasted`` when part of what it
    loaded was evicted again before the call, ``early`` when the call came later than the
    prediction's spread (p90 - median) after the load, ``on_time`` otherwise. (A call that
    comes before the prefetch is ``late``, counted where it happens.)"""
    if kept_tokens < loaded_tokens:
        return "wasted"
    return "early" if arrived_at - loaded_at > spread_s else "on_time"


class RateMeter:
    """Prefill tokens per second from timed batches: total tokens over total time of the
    last ``window`` samples (a plain ratio, robust to one slow batch)."""

    def __init__(self, window: int = 32) -> None:
        self.window = window
        self._samples: list[tuple[int, float]] = []

    def add(self, tokens: int, seconds: float) -> None:
        if tokens <= 0 or seconds <= 0:
            return
        self._samples.append((tokens, seconds))
        del self._samples[:-self.window]

    def __len__(self) -> int:
        return len(self._samples)

    def rate(self) -> float | None:
        if not self._samples:
            return None
        return sum(t for t, _ in self._samples) / sum(s for _, s in self._samples)
