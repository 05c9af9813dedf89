"""Small statistics helpers: nearest-rank percentiles, medians, and loop-lag histogram windows."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (`fraction` in 0..1) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """The median of `values` (mean of the middle two for an even count); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


@dataclass(frozen=True)
class LagWindow:
    """Loop lag over a window: wake-ups counted, and bucket upper edges in milliseconds."""

    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    seconds: float


def histogram_quantile(histogram: Mapping[int, int], fraction: float) -> float:
    """The upper edge (ms) of the whole-millisecond bucket holding the `fraction` quantile."""
    total = sum(histogram.values())
    if total <= 0:
        return 0.0
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= fraction * total:
            return float(bucket + 1)
    return float(max(histogram) + 1)


def lag_window(before: Mapping[int, int], after: Mapping[int, int], seconds: float) -> LagWindow:
    """The lag between two cumulative histograms (whole-ms bucket -> wake-ups)."""
    window = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    window = {k: v for k, v in window.items() if v > 0}
    return LagWindow(
        samples=sum(window.values()),
        p50_ms=histogram_quantile(window, 0.50),
        p99_ms=histogram_quantile(window, 0.99),
        max_ms=float(max(window) + 1) if window else 0.0,
        seconds=seconds,
    )
