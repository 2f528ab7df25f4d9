"""Our bookkeeping must never take serving down: a failure is logged loudly, serving goes on."""

from __future__ import annotations

import functools
from typing import Callable

from thunderagent_sglang.engine.logs import get_logger


def guard(fn: Callable, *args, **kwargs):
    """Call ``fn``; on failure log it loudly and answer None (serving continues)."""
    try:
        return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - logged loudly, serving continues
        name = getattr(fn, "__name__", repr(fn))
        get_logger().exception("ThunderAgent: %s failed; program state may be off", name)
        return None


def guarded(method):
    """``method`` under ``guard``."""

    @functools.wraps(method)
    def safe(*args, **kwargs):
        return guard(method, *args, **kwargs)

    return safe
