"""Percentiles, printing and failure checks shared by the benchmark scripts."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


class BenchFailed(Exception):
    """Something a benchmark drove did not work, so its numbers would be meaningless."""


def check(ok: bool, message: str) -> None:
    """``assert`` that survives ``python -O``: a failed step fails the benchmark."""
    if not ok:
        raise BenchFailed(message)


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(name: str, samples_s: Sequence[float], unit: str = "ms") -> dict[str, float]:
    scale = 1000.0 if unit == "ms" else 1.0
    row = {
        "median": statistics.median(samples_s) * scale,
        "p95": percentile(samples_s, 95) * scale,
        "p99": percentile(samples_s, 99) * scale,
    }
    print(
        f"{name:<44} n={len(samples_s):<4} median={row['median']:8.2f}{unit}"
        f"  p95={row['p95']:8.2f}{unit}  p99={row['p99']:8.2f}{unit}"
    )
    return row
