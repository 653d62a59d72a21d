"""Bucketed durations (a histogram's counts) kept by the code that measures them.

The event log counts its write and sync times here, with no metrics library in the store:
``/metrics`` reads the counts at scrape time. ``observe`` is a few integer additions, safe from
the one worker thread at a time that appends to the log.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

__all__ = ["DISK_BUCKETS", "Timings"]

# seconds: an fsync on an SSD takes well under a millisecond, a busy disk a second or more
DISK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Timings:
    """Counts per upper bound (``le``), the last one +Inf, and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float] = DISK_BUCKETS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # not cumulative: one per bucket
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or under it), +Inf last: a histogram's buckets."""
        out = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out
