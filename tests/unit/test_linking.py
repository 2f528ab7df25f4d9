"""Linking untagged calls to the program whose last sequence they continue."""

from __future__ import annotations

from thunderagent_sglang.program.linking import PrefixLinker


def test_longest_matching_last_sequence_wins():
    linker = PrefixLinker()
    linker.remember("short", [1, 2, 3])
    linker.remember("long", [1, 2, 3, 4, 5])
    assert linker.find([1, 2, 3, 4, 5, 6, 7]) == "long"
    assert linker.find([1, 2, 3, 9]) == "short"


def test_no_link_when_no_sequence_is_a_prefix():
    linker = PrefixLinker()
    linker.remember("a", [1, 2, 3])
    assert linker.find([1, 2]) is None          # shorter than any stored sequence
    assert linker.find([1, 9, 3, 4]) is None    # differs inside
    assert linker.find([]) is None


def test_same_end_token_and_length_are_told_apart_by_content():
    linker = PrefixLinker()
    linker.remember("a", [1, 2, 3])
    linker.remember("b", [7, 8, 3])
    assert linker.find([7, 8, 3, 0]) == "b"
    assert linker.find([1, 2, 3, 0]) == "a"


def test_remember_replaces_and_forget_removes():
    linker = PrefixLinker()
    linker.remember("a", [1, 2])
    linker.remember("a", [1, 2, 3, 4])
    assert linker.find([1, 2, 5]) is None
    assert linker.find([1, 2, 3, 4, 5]) == "a"
    linker.forget("a")
    linker.forget("a")  # idempotent
    assert linker.find([1, 2, 3, 4, 5]) is None and len(linker) == 0
    assert linker._lengths == {} and dict(linker._by_end) == {}
