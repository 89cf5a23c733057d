"""Shared helpers for the benchmarks: percentiles and a figure printer."""

from __future__ import annotations

import statistics


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(values: list[float]) -> float:
    return statistics.median(values)


def figure(name: str, value: float, unit: str, note: str = "") -> None:
    print(f"{name:<44} {value:>12.3f} {unit:<8} {note}", flush=True)
