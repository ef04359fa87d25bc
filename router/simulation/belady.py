"""Belady's MIN: the fewest misses any cache of `capacity` items can have on a known sequence.

On a miss with a full cache, evict the resident item whose next use is farthest in the future
(never used again counts as farthest). Next uses are precomputed in one backward pass; the
residents sit in a max-heap on next use with lazy deletion (an entry is stale once its item was
used again), rebuilt from the live residents whenever stale entries outnumber them, so a run
costs O(n log K). Every miss counts, the first use of each item included: for the cluster,
misses are model loads, and `capacity` is replicas x slots — a bound no router can beat.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from heapq import heapify, heappop, heappush

__all__ = ["belady_misses"]


def belady_misses(sequence: Sequence[Hashable], capacity: int) -> int:
    """Misses of the optimal offline cache of `capacity` items on `sequence`."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}")
    n = len(sequence)
    next_use = [0] * n
    upcoming: dict[Hashable, int] = {}
    for i in range(n - 1, -1, -1):
        item = sequence[i]
        next_use[i] = upcoming.get(item, n + i)  # "never again": past n, and distinct
        upcoming[item] = i
    resident: dict[Hashable, int] = {}  # item -> its next use
    heap: list[tuple[int, Hashable]] = []  # (-next use, item); next uses are all distinct
    misses = 0
    for i, item in enumerate(sequence):
        nxt = next_use[i]
        if item not in resident:
            misses += 1
            if len(resident) >= capacity:
                while True:
                    negated, victim = heappop(heap)
                    if resident.get(victim) == -negated:
                        del resident[victim]
                        break
        resident[item] = nxt
        heappush(heap, (-nxt, item))
        if len(heap) > 2 * capacity + 64:
            heap = [(-use, key) for key, use in resident.items()]
            heapify(heap)
    return misses
