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


def test_window_counter_idle_agrees_with_total() -> None:
    window = WindowCounter(60, buckets=6)
    assert window.idle(0.0) and window.total(0.0) == 0
    window.add(0.0)
    window.add(30.0)
    for now in (0.0, 30.0, 59.0, 65.0, 89.0):
        assert not window.idle(now) and window.total(now) > 0, now
    for now in (90.0, 200.0):
        assert window.idle(now) and window.total(now) == 0, now
    # a count dated after now (a worker's clock ahead) is not in the window ending now
    ahead = WindowCounter(60, buckets=6)
    ahead.add(10_000.0)
    assert ahead.idle(100.0) and ahead.total(100.0) == 0
    assert not ahead.idle(10_000.0) and ahead.total(10_000.0) == 1
    # out of order: an older bucket started after a newer one
    late = WindowCounter(60, buckets=6)
    late.add(100.0)
    late.add(50.0)
    assert not late.idle(105.0) and late.total(105.0) == 2
    assert late.idle(170.0) and late.total(170.0) == 0
