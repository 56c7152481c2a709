"""Bounded containers keep their caps and count what they drop."""

from __future__ import annotations

from flower_practices.bounded import OTHER, LabelCap, LRUDict, SampleRing, WindowCounter, percentile


def test_lru_evicts_oldest_and_counts() -> None:
    lru: LRUDict[str, int] = LRUDict(3)
    for i in range(5):
        lru.put(str(i), i)
    assert list(lru) == ["2", "3", "4"]
    assert lru.evicted == 2
    lru.touch("2")
    lru.put("5", 5)
    assert list(lru) == ["4", "2", "5"]


def test_label_cap() -> None:
    cap = LabelCap("task", 2)
    assert [cap("a"), cap("b"), cap("c"), cap("a"), cap("d")] == ["a", "b", OTHER, "a", OTHER]
    assert cap.overflow == 2


def test_sample_ring_and_percentile() -> None:
    ring = SampleRing(4)
    for t in range(10):
        ring.add(float(t), float(t * 10))
    assert len(ring) == 4
    assert sorted(ring.since(7.0)) == [70.0, 80.0, 90.0]
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([5.0], 95) == 5.0


def test_window_counter_forgets_old_buckets() -> None:
    window = WindowCounter(60, buckets=6)
    window.add(0.0, 5)
    window.add(30.0, 2)
    assert window.total(30.0) == 7
    assert window.total(65.0) == 2
    assert window.total(200.0) == 0
