"""Distributions the coordinator measures, kept as plain counts (pure: no clock, no I/O).

The TaskQueue's core observes every task's queue wait, run time and submit-to-result
latency into :class:`Histogram` objects and counts outcomes per task name in
:class:`NameCounts`.  Observing is a bisect and two additions on the actor's own
thread; the status page takes a copy (:meth:`Histogram.snapshot`) through an ask and
renders it with ``prometheus_client``.  Task names are user input, so the number of
names counted is bounded: past ``max_names`` the rest count under ``"other"``.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Upper bounds (seconds), ~2.5x apart: from a no-op's 100 microseconds to a long task's hour.
SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
           1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
OTHER = "other"


class Histogram:
    """Cumulative counts below each bound (the last bucket is +Inf), their sum and count."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = SECONDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative: one addition per observation
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """Cumulative buckets as ``[(upper bound, count), ..., ("+Inf", count)]``, the sum and the count."""
        running, buckets = 0, []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return {"buckets": buckets, "sum": self.sum, "count": running}


class NameCounts:
    """Counts per (task name, outcome), with at most ``max_names`` names (then ``other``)."""

    __slots__ = ("max_names", "counts")

    def __init__(self, max_names: int = 50) -> None:
        self.max_names = max_names
        self.counts: dict[str, dict[str, int]] = {}

    def add(self, name: str, outcome: str) -> None:
        per_name = self.counts.get(name)
        if per_name is None:
            if len(self.counts) >= self.max_names:
                name = OTHER
            per_name = self.counts.setdefault(name, {})
        per_name[outcome] = per_name.get(outcome, 0) + 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {name: dict(outcomes) for name, outcomes in self.counts.items()}


class NamedHistograms:
    """One :class:`Histogram` per task name, at most ``max_names`` names (then ``other``)."""

    __slots__ = ("max_names", "by_name")

    def __init__(self, max_names: int = 50) -> None:
        self.max_names = max_names
        self.by_name: dict[str, Histogram] = {}

    def observe(self, name: str, value: float) -> None:
        histogram = self.by_name.get(name)
        if histogram is None:
            if len(self.by_name) >= self.max_names:
                name = OTHER
            histogram = self.by_name.get(name)
            if histogram is None:
                histogram = self.by_name[name] = Histogram()
        histogram.observe(value)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: h.snapshot() for name, h in self.by_name.items()}
