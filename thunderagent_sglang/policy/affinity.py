"""Pure: which replica has seen the longest prefix of a prompt (the router's tie-break, and
its cache-aware placement of untagged calls, as SGLang's gateway does).

A prompt's text is cut into fixed chunks; each chunk's key hashes it with every chunk before
it, so a match of ``k`` keys means the first ``k`` chunks are the same. Each replica keeps the
keys of what was sent to it, least recently used first out. This only ranks replicas; it is
never taken for a token count (the replicas report those exactly).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

CHUNK_CHARS = 256
MAX_CHUNKS = 256  # a prompt's first 64 K characters decide; the rest adds little to a rank
MAX_KEYS = 200_000  # per replica


def prefix_keys(text: str, chunk: int = CHUNK_CHARS, limit: int = MAX_CHUNKS) -> list[bytes]:
    """The chained keys of ``text``'s whole chunks (a short tail is left out)."""
    keys, digest = [], b""
    for start in range(0, min(len(text), chunk * limit) - chunk + 1, chunk):
        digest = hashlib.blake2b(digest + text[start:start + chunk].encode("utf-8", "replace"),
                                 digest_size=12).digest()
        keys.append(digest)
    return keys


class PrefixAffinity:
    """Per replica, the prefix keys of prompts sent to it (bounded, LRU)."""

    def __init__(self, max_keys: int = MAX_KEYS):
        self.max_keys = max_keys
        self._seen: dict[str, OrderedDict[bytes, None]] = {}

    def record(self, replica: str, keys: list[bytes]) -> None:
        seen = self._seen.setdefault(replica, OrderedDict())
        for key in keys:
            seen[key] = None
            seen.move_to_end(key)
        while len(seen) > self.max_keys:
            seen.popitem(last=False)

    def matched(self, replica: str, keys: list[bytes]) -> int:
        """How many leading chunks of the prompt ``replica`` has seen."""
        seen = self._seen.get(replica)
        if not seen:
            return 0
        count = 0
        for key in keys:
            if key not in seen:
                break
            count += 1
        return count

    def forget(self, replica: str) -> None:
        """The replica lost its cache (it was restarted or taken out)."""
        self._seen.pop(replica, None)
