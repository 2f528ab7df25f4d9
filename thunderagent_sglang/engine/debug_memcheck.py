"""``THUNDERAGENT_DEBUG_MEMCHECK=1``: log each new result of SGLang's idle KV-leak check.

SGLang checks on every fully idle scheduler step that every KV slot is free,
evictable, protected or held (and by default raises on a leak). This hook
logs the check's own message whenever it changes, so tests can read the
exact pool state once the server is idle.
"""

from __future__ import annotations

from thunderagent_sglang import compat
from thunderagent_sglang.engine import hooks
from thunderagent_sglang.engine.logs import get_logger

ENV = "THUNDERAGENT_DEBUG_MEMCHECK"
LINE_PREFIX = "ThunderAgent idle memory check:"
_last: list[str] = []


def _log_result(result, *args, **kwargs):
    has_leak, messages = result
    line = f"{LINE_PREFIX} leak={has_leak} {' '.join(messages)}"
    if not _last or _last[-1] != line:
        _last[:] = [line]
        get_logger().info(line)
    return result


def install() -> None:
    hooks.install(compat.CHECK_ALL_POOLS, _log_result, "after")
