"""The core's distributions: cumulative buckets as Prometheus expects them, bounded name labels."""

from __future__ import annotations

from actorsched.core.stats import OTHER, Histogram, NameCounts, NamedHistograms


def test_a_histogram_reports_cumulative_buckets_its_sum_and_count() -> None:
    histogram = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 2.0, 3.0):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot["buckets"] == [(0.1, 2), (1.0, 3), (float("inf"), 5)]  # a value on a bound counts in it
    assert snapshot["count"] == 5 and snapshot["sum"] == 5.65


def test_task_names_are_bounded_so_a_client_cannot_grow_the_label_set() -> None:
    counts, times = NameCounts(max_names=3), NamedHistograms(max_names=3)
    for i in range(1000):
        counts.add(f"m:f{i}", "succeeded")
        times.observe(f"m:f{i}", 0.01)
    assert len(counts.snapshot()) == 4 and counts.snapshot()[OTHER] == {"succeeded": 997}
    assert len(times.snapshot()) == 4 and times.snapshot()[OTHER]["count"] == 997
    counts.add("m:f0", "failed")  # a name already counted keeps its own line
    assert counts.snapshot()["m:f0"] == {"succeeded": 1, "failed": 1}
