"""Small bounded containers used on the event hot path: every operation is O(1).

- :class:`LRUDict` keeps at most ``limit`` entries, evicting the least recently touched.
- :class:`LabelCap` maps label values to themselves until ``limit`` distinct values
  are known, then to ``"__other__"`` (counted), so metric cardinality stays bounded; a
  value whose series are gone (a forgotten worker) can be released to free its slot.
- :class:`SampleRing` keeps the last ``size`` (timestamp, value) samples for windowed
  percentiles computed later, off the hot path.
- :class:`WindowCounter` counts occurrences in fixed time buckets over a sliding window.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

OTHER = "__other__"


class LRUDict(OrderedDict, Generic[K, V]):
    """An insertion/touch-ordered dict with a size cap; ``evicted`` counts evictions."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        if limit < 1:
            raise ValueError("LRUDict limit must be >= 1")
        self.limit = limit
        self.evicted = 0

    def put(self, key: K, value: V) -> V | None:
        """Insert or replace ``key``; return the value evicted to make room, if any."""
        if key in self:
            self.move_to_end(key)
        self[key] = value
        if len(self) > self.limit:
            self.evicted += 1
            return self.popitem(last=False)[1]
        return None

    def touch(self, key: K) -> V | None:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


class LabelCap:
    """Bound the number of distinct values one label may take."""

    __slots__ = ("limit", "known", "overflow", "name")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.known: set[str] = set()
        self.overflow = 0

    def __call__(self, value: str) -> str:
        known = self.known
        if value in known:
            return value
        if len(known) < self.limit:
            known.add(value)
            return value
        self.overflow += 1
        return OTHER

    def release(self, value: str) -> None:
        """Forget ``value`` (no series carries it any more), freeing its slot."""
        self.known.discard(value)


class SampleRing:
    """The most recent ``size`` samples, as two parallel preallocated lists."""

    __slots__ = ("size", "times", "values", "pos", "filled")

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self.times = [0.0] * size
        self.values = [0.0] * size
        self.pos = 0
        self.filled = 0

    def add(self, ts: float, value: float) -> None:
        pos = self.pos
        self.times[pos] = ts
        self.values[pos] = value
        self.pos = (pos + 1) % self.size
        if self.filled < self.size:
            self.filled += 1

    def since(self, cutoff: float) -> list[float]:
        """Values whose timestamp is at or after ``cutoff`` (evaluation path)."""
        times, values = self.times, self.values
        return [values[i] for i in range(self.filled) if times[i] >= cutoff]

    def __len__(self) -> int:
        return self.filled


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``q`` in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


#: :attr:`WindowCounter.newest` before anything was added
_NO_BUCKET = -(1 << 62)


class WindowCounter:
    """Counts events in ``buckets`` time buckets covering ``window`` seconds."""

    __slots__ = ("bucket_seconds", "counts", "stamps", "buckets", "newest")

    def __init__(self, window: float, buckets: int = 12) -> None:
        self.buckets = buckets
        self.bucket_seconds = window / buckets
        self.counts = [0] * buckets
        self.stamps = [-1] * buckets
        #: the newest bucket ever started (none yet: before any), kept where one starts
        self.newest = _NO_BUCKET

    def add(self, ts: float, n: int = 1) -> None:
        slot = int(ts // self.bucket_seconds)
        i = slot % self.buckets
        if self.stamps[i] != slot:
            self.stamps[i] = slot
            self.counts[i] = 0
            if slot > self.newest:
                self.newest = slot
        self.counts[i] += n

    def idle(self, now: float) -> bool:
        """Nothing added in the window ending at ``now``. O(1), unless something was
        added dated after ``now`` (a clock ahead): then whether :meth:`total` is 0."""
        current = int(now // self.bucket_seconds)
        if self.newest < current - self.buckets + 1:
            return True
        if self.newest <= current:
            return False
        return self.total(now) == 0

    def total(self, now: float) -> int:
        current = int(now // self.bucket_seconds)
        oldest = current - self.buckets + 1
        if self.newest < oldest:  # nothing in the window (O(1))
            return 0
        pairs = zip(self.counts, self.stamps, strict=True)
        return sum(c for c, s in pairs if oldest <= s <= current)

