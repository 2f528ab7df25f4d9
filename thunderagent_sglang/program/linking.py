"""``--thunderagent-link-untagged``: give an untagged call to the program it continues.

An unmodified agent sends no program id, but its next call's prompt starts with
the whole previous sequence (prompt and output) of its own last call. We keep
each live program's last full sequence and link an untagged call to the program
whose last sequence is the longest prefix of the call's prompt. Pure (numpy).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np


class PrefixLinker:
    """Last full sequences of programs, looked up by "is a prefix of this prompt".

    A lookup costs one dict probe per distinct stored length up to the prompt's
    length, plus one array comparison per candidate whose last token matches.
    """

    def __init__(self):
        self._sequences: dict[str, np.ndarray] = {}
        self._by_end: dict[tuple[int, int], set[str]] = defaultdict(set)
        self._lengths: dict[int, int] = defaultdict(int)  # length -> how many programs

    def remember(self, program_id: str, sequence: Sequence[int]) -> None:
        self.forget(program_id)
        seq = np.asarray(sequence, dtype=np.int64)
        if len(seq) == 0:
            return
        self._sequences[program_id] = seq
        self._by_end[(len(seq), int(seq[-1]))].add(program_id)
        self._lengths[len(seq)] += 1

    def forget(self, program_id: str) -> None:
        seq = self._sequences.pop(program_id, None)
        if seq is None:
            return
        end = (len(seq), int(seq[-1]))
        self._by_end[end].discard(program_id)
        if not self._by_end[end]:
            del self._by_end[end]
        self._lengths[len(seq)] -= 1
        if not self._lengths[len(seq)]:
            del self._lengths[len(seq)]

    def find(self, prompt: Sequence[int]) -> str | None:
        """The program whose last sequence is the longest prefix of ``prompt`` (ties: any)."""
        tokens = np.asarray(prompt, dtype=np.int64)
        for length in sorted((n for n in self._lengths if n <= len(tokens)), reverse=True):
            for program_id in self._by_end.get((length, int(tokens[length - 1])), ()):
                if np.array_equal(self._sequences[program_id], tokens[:length]):
                    return program_id
        return None

    def __len__(self) -> int:
        return len(self._sequences)
