"""Why did a program's call recompute its prefill? Pure (numpy), no SGLang import.

A call's prompt usually extends its program's previous sequence. Of the prompt
tokens that were in that previous sequence (up to where the client's new prompt
first differs from it), those not served from the cache were recomputed because
the program's KV was **evicted**; tokens after that point that sat where the
previous sequence had KV were recomputed because the client **changed** its own
earlier prefix (a re-rendered history, an injected timestamp, ...).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np


class Misses(NamedTuple):
    evicted: int  # own previous tokens recomputed because their KV was gone
    changed: int  # tokens recomputed because the client changed its earlier prefix


def as_tokens(tokens: Sequence[int]) -> np.ndarray:
    return np.asarray(tokens, dtype=np.int64)


def kv_tokens(prompt: Sequence[int], output: Sequence[int]) -> list[int]:
    """The tokens of a finished call that have KV: the prompt and all but the last output."""
    return list(prompt) + list(output[:-1])


def kv_sequence(prompt: Sequence[int], output: Sequence[int]) -> np.ndarray:
    return as_tokens(kv_tokens(prompt, output))


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


def classify(previous: np.ndarray | None, prompt: np.ndarray, cached: int,
             page_size: int = 1, common: int | None = None) -> Misses:
    """Split the recomputed part of ``prompt`` by cause.

    ``previous`` is the program's previous ``kv_sequence`` (None on its first call),
    ``cached`` the prompt tokens served from the cache. The last prompt token is
    always computed (its logits are needed), and only whole pages are cached, so
    neither counts as a miss. ``common``: their common prefix length, if the
    caller has it already.
    """
    if previous is None or len(prompt) == 0:
        return Misses(0, 0)
    cacheable = len(prompt) - 1
    if common is None:
        common = common_prefix_len(previous, prompt)
    reusable = min(common, cacheable) // page_size * page_size
    evicted = max(0, reusable - cached)
    changed = max(0, min(len(previous), cacheable) - max(common, cached))
    return Misses(evicted, changed)
