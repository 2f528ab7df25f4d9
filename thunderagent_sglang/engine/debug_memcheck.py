"""``THUNDERAGENT_DEBUG_MEMCHECK=1``: log each new result of SGLang's idle KV-leak check.

SGLang checks on every fully idle scheduler step that every KV slot is free,
evictable, protected or held (and by default raises on a leak). This hook
logs the check's own message once per idle period (after each new batch) and
whenever it changes, so tests can read the exact pool state once the server is
idle. It also recounts the programs'
resident and host tokens by a walk of the tree and logs whether the
event-kept counters agree.
"""

from __future__ import annotations

from thunderagent_sglang import compat
from thunderagent_sglang.engine import hooks
from thunderagent_sglang.engine.logs import get_logger

ENV = "THUNDERAGENT_DEBUG_MEMCHECK"
LINE_PREFIX = "ThunderAgent idle memory check:"
_last: dict[int, tuple] = {}


RECOUNT_PREFIX = "ThunderAgent residency recount:"


_outputs = [0]  # output streams so far: a new value means a new busy period ended


def _count_outputs(result, *args, **kwargs):
    _outputs[0] += 1
    return result


def _log_result(result, *args, **kwargs):
    has_leak, messages = result
    _log_once(0, f"{LINE_PREFIX} leak={has_leak} {' '.join(messages)}", _outputs[0])
    from thunderagent_sglang.engine import program_tree  # SGLang's tree core: import late

    wrong = program_tree.recount()
    _log_once(1, f"{RECOUNT_PREFIX} " + (f"MISMATCH {'; '.join(wrong)}" if wrong else
                                          f"ok ({len(program_tree.RESIDENCY)} tagged nodes)"))
    return result


def _log_once(slot: int, line: str, period=None) -> None:
    """Log ``line`` unless it repeats the last line of its slot in the same period."""
    if _last.get(slot) != (line, period):
        _last[slot] = (line, period)
        get_logger().info(line)


def install() -> None:
    hooks.install(compat.CHECK_ALL_POOLS, _log_result, "after")
    hooks.install(compat.OUTPUT_STREAMER_STREAM_OUTPUT, _count_outputs, "after")
