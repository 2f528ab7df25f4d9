"""``THUNDERAGENT_DEBUG_MEMCHECK=1``: log each new result of SGLang's idle KV-leak check.

SGLang checks on every fully idle scheduler step that every KV slot is free,
evictable, protected or held (and by default raises on a leak). This hook
logs the check's own message once per idle period (after each new batch) and
whenever it changes, so tests can read the exact pool state once the server is
idle. With program-aware features on it also recounts the programs' resident and
host tokens by a walk of the tree and logs whether the event-kept counters agree.
"""

from __future__ import annotations

from thunderagent_sglang import compat
from thunderagent_sglang.engine import hooks
from thunderagent_sglang.engine.logs import get_logger

ENV = "THUNDERAGENT_DEBUG_MEMCHECK"
LINE_PREFIX = "ThunderAgent idle memory check:"
RECOUNT_PREFIX = "ThunderAgent residency recount:"


class MemcheckLog:
    def __init__(self, runtime=None):
        self.runtime = runtime  # None: plain SGLang, no program counters to recount
        self.outputs = 0  # output streams so far: a new value means a busy period ended
        self.last: dict[int, tuple] = {}

    def count_outputs(self, result, *args, **kwargs):
        self.outputs += 1
        return result

    def log_result(self, result, *args, **kwargs):
        has_leak, messages = result
        consensus = getattr(self.runtime, "consensus", None)
        rank = (f" (tensor-parallel rank {consensus.rank})"
                if consensus is not None and consensus.size > 1 else "")
        self._log_once(0, f"{LINE_PREFIX} leak={has_leak} {' '.join(messages)}{rank}",
                       self.outputs)
        tree = self.runtime.tree if self.runtime is not None else None
        if tree is not None:
            wrong = tree.recount()
            self._log_once(1, f"{RECOUNT_PREFIX} " + (
                f"MISMATCH {'; '.join(wrong)}" if wrong
                else f"ok ({len(self.runtime.residency)} tagged nodes)"))
        return result

    def _log_once(self, slot: int, line: str, period=None) -> None:
        """Log ``line`` unless it repeats the last line of its slot in the same period."""
        if self.last.get(slot) != (line, period):
            self.last[slot] = (line, period)
            get_logger().info(line)


def install(runtime=None) -> MemcheckLog:
    log = MemcheckLog(runtime)
    hooks.install(compat.CHECK_ALL_POOLS, log.log_result, "after")
    hooks.install(compat.OUTPUT_STREAMER_STREAM_OUTPUT, log.count_outputs, "after")
    return log
