"""``--thunderagent-decision-trace FILE``: what the scheduler's decisions read and what they
decided, one JSON object per line (glue; tensor-parallel rank 0 only).

Every record has ``e`` (its kind) and ``t`` (the runtime's clock, seconds):

- ``config``: the scheduler's ``SchedulerConfig`` fields, ``block`` (the demand ledger's block
  size) and ``tick_s``; first, and again whenever ``--thunderagent-decay auto`` switches decay
  (the new config holds from then).
- ``held``: a tagged call held (``p``, ``rid``, ``tokens``: its prompt, ``headroom``: its max
  new tokens as the scheduler counts them); ``t``: when it was held.
- ``call``: a tagged call handed to SGLang (same fields); ``t``: its program's phase start.
- ``finish``: a tagged call left the engine (``p``, ``rid``, ``tokens``: what has KV).
- ``end``: a program ended (``p``, ``cause``).
- ``pause``, ``resume``: (``p``, ``reason``, ``operator``); ``t``: the status change.
- ``check``: one decision: ``cause``, ``views`` (its snapshot, ``ProgramView`` fields),
  ``untagged`` (tokens), and its ``pause``, ``mark``, ``unmark``, ``resume`` lists.

``python -m sim replay FILE`` feeds the same events to the simulator's policy and compares
every decision. A write that fails stops the trace with one error in the log.
"""

from __future__ import annotations

import dataclasses
import json

from thunderagent_sglang.engine.logs import get_logger


class NoTrace:
    """Tracing off: every record is dropped (callers check ``on`` before building one that
    costs a lookup)."""

    on = False

    def write(self, kind: str, t: float, **fields) -> None:
        pass

    def check(self, t: float, cause: str, views, untagged: int, decision) -> None:
        pass


class DecisionTrace(NoTrace):
    on = True

    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "w", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives on
        get_logger().info("ThunderAgent: writing the scheduler's decision trace to %s", path)

    def write(self, kind: str, t: float, **fields) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps({"e": kind, "t": t, **fields}, separators=(",", ":"),
                                        default=list) + "\n")  # token sequences as lists
        except (OSError, ValueError, TypeError) as exc:
            get_logger().error("ThunderAgent: the decision trace %s stopped: %s", self.path, exc)
            self._file = None

    def check(self, t: float, cause: str, views, untagged: int, decision) -> None:
        self.write("check", t, cause=cause, views=[dataclasses.asdict(v) for v in views],
                   untagged=untagged, pause=list(decision.pause), mark=list(decision.mark),
                   unmark=list(decision.unmark), resume=list(decision.resume))


def open_trace(path: str | None, leader: bool) -> NoTrace:
    """The trace a runtime writes: off without a path and on every rank but the leader. A
    file that cannot be opened leaves it off, with one error in the log."""
    if path is None or not leader:
        return NoTrace()
    try:
        return DecisionTrace(path)
    except OSError as exc:
        get_logger().error("ThunderAgent: cannot write the decision trace to %s (%s); tracing "
                           "is off", path, exc)
        return NoTrace()
