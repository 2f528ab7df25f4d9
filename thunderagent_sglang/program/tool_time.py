"""Pure: how long a program's tool (acting) phase lasts, learned online per tool and per program.

An acting phase runs from a program's call finishing to its next call arriving (or being held).
It is observed under the name of the tool the program reported for that phase
(``POST /programs/{id}/tool {"tool": NAME}``, or the sidecar's exec), or under ``gap`` when none
was named. The first ``MAX_NAMES`` distinct names get a model of their own; later names share
``other`` (so an agent cannot grow the table or the metric labels without bound).

A prediction is the median and 90th percentile of the last observations: the program's own for
that tool once it has ``MIN_OWN`` of them (agents repeat their tools), else every program's for
that tool, else none. No clock here: the table passes durations in seconds.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from typing import Any

GAP = "gap"
OTHER = "other"
MAX_NAMES = 64
WINDOW = 64  # observations kept per tool (all programs)
PROGRAM_WINDOW = 16  # observations kept per program and tool
MIN_OWN = 3
_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def check_tool_name(value: Any) -> str | None:
    """A tool name as given in a hint: None, or 1-64 characters of ``[A-Za-z0-9._:-]``;
    ValueError otherwise (the value shown short)."""
    if value is None:
        return None
    if isinstance(value, str) and _NAME.fullmatch(value):
        return value
    raise ValueError("tool must be 1-64 characters of letters, digits and . _ : -, got "
                     + short_repr(value))


def short_repr(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for error messages about client input."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


@dataclass(frozen=True)
class Prediction:
    median_s: float
    p90_s: float
    observations: int
    source: str  # "program" (its own history) or "tool" (every program's)


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted values (nearest rank, the lower one on ties)."""
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


class ToolTimes:
    def __init__(self, *, max_names: int = MAX_NAMES, window: int = WINDOW,
                 program_window: int = PROGRAM_WINDOW, min_own: int = MIN_OWN):
        self.max_names, self.window = max_names, window
        self.program_window, self.min_own = program_window, min_own
        self._by_key: dict[str, deque[float]] = {}
        self._counts: dict[str, int] = {}
        self._by_program: dict[str, dict[str, deque[float]]] = {}
        self._names: set[str] = set()

    def key(self, tool: str | None) -> str:
        """The model a tool name is observed and predicted under (``gap`` for no name)."""
        if tool is None:
            return GAP
        if tool in self._names:
            return tool
        if len(self._names) < self.max_names and tool not in (GAP, OTHER):
            self._names.add(tool)
            return tool
        return OTHER

    def observe(self, key: str, program_id: str, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self._by_key.setdefault(key, deque(maxlen=self.window)).append(seconds)
        self._counts[key] = self._counts.get(key, 0) + 1
        own = self._by_program.setdefault(program_id, {})
        own.setdefault(key, deque(maxlen=self.program_window)).append(seconds)

    def predict(self, key: str, program_id: str) -> Prediction | None:
        own = self._by_program.get(program_id, {}).get(key)
        if own is not None and len(own) >= self.min_own:
            return _prediction(own, "program")
        shared = self._by_key.get(key)
        return _prediction(shared, "tool") if shared else None

    def forget(self, program_id: str) -> None:
        """A program ended: its own history goes (the per-tool one stays)."""
        self._by_program.pop(program_id, None)

    def stats(self) -> dict[str, dict]:
        """Per tool: observations ever, and the median and 90th percentile of the window."""
        out = {}
        for key, window in sorted(self._by_key.items()):
            ordered = sorted(window)
            out[key] = {"observations": self._counts[key],
                        "median_s": round(quantile(ordered, 0.5), 3),
                        "p90_s": round(quantile(ordered, 0.9), 3)}
        return out


def _prediction(values, source: str) -> Prediction:
    ordered = sorted(values)
    return Prediction(quantile(ordered, 0.5), quantile(ordered, 0.9), len(ordered), source)
