"""Belady's MIN against an exhaustive search over every eviction choice."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.simulation.belady import belady_misses


def brute_force_misses(sequence: Sequence[int], capacity: int) -> int:
    """The fewest misses over all demand-paging eviction choices."""

    @cache
    def best(i: int, resident: frozenset[int]) -> int:
        if i == len(sequence):
            return 0
        item = sequence[i]
        if item in resident:
            return best(i + 1, resident)
        if len(resident) < capacity:
            return 1 + best(i + 1, resident | {item})
        return 1 + min(best(i + 1, (resident - {victim}) | {item}) for victim in resident)

    return best(0, frozenset())


@settings(max_examples=300, deadline=None)
@given(
    sequence=st.lists(st.integers(min_value=0, max_value=6), max_size=18),
    capacity=st.integers(min_value=1, max_value=4),
)
def test_matches_brute_force(sequence: list[int], capacity: int) -> None:
    assert belady_misses(sequence, capacity) == brute_force_misses(sequence, capacity)


def test_known_sequences() -> None:
    assert belady_misses([], 2) == 0
    assert belady_misses(["a", "b", "a", "b"], 2) == 2
    assert belady_misses(["a", "b", "c", "a", "b", "c"], 2) == 4
    assert belady_misses([1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5], 3) == 7  # the textbook example


def test_long_sequence_keeps_the_heap_small() -> None:
    sequence = [i % 7 for i in range(20_000)]
    assert belady_misses(sequence, 6) == 6 + (20_000 - 7) // 6 + 1


def test_rejects_empty_cache() -> None:
    with pytest.raises(ValueError, match="capacity"):
        belady_misses([1], 0)
