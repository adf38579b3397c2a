"""Latency histograms with fixed log-spaced buckets: O(log buckets) per observation, quantiles on demand.

Fixed buckets (not a window of raw samples) keep the per-frame cost constant and let Prometheus scrape
cumulative buckets; p50/p90/p99 are interpolated inside a bucket (relative error under half the bucket ratio).
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from edge_runtime.latency import STAGES


def log_buckets(lo_ms: float = 0.01, hi_ms: float = 120_000.0, ratio: float = 1.15) -> tuple[float, ...]:
    n = int(math.ceil(math.log(hi_ms / lo_ms) / math.log(ratio)))
    return tuple(lo_ms * ratio**i for i in range(n + 1))


_DEFAULT_BOUNDS = log_buckets()


class LatencyHistogram:
    """Counts of observations per bucket (upper bounds in ms) plus count, sum and max."""

    __slots__ = ("bounds", "counts", "count", "total", "max")

    def __init__(self, bounds: tuple[float, ...] = _DEFAULT_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last bucket is +Inf
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, ms: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, ms)] += 1
        self.count += 1
        self.total += ms
        if ms > self.max:
            self.max = ms

    def copy(self) -> LatencyHistogram:
        h = LatencyHistogram(self.bounds)
        h.counts, h.count, h.total, h.max = list(self.counts), self.count, self.total, self.max
        return h

    def since(self, earlier: LatencyHistogram) -> LatencyHistogram:
        """Observations added after ``earlier`` (a copy of this histogram); max is the overall max."""
        h = LatencyHistogram(self.bounds)
        h.counts = [a - b for a, b in zip(self.counts, earlier.counts, strict=True)]
        h.count, h.total, h.max = self.count - earlier.count, self.total - earlier.total, self.max
        return h

    def quantile(self, q: float) -> float | None:
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = self.bounds[i - 1] if i > 0 else 0.0
                hi = self.bounds[i] if i < len(self.bounds) else max(self.max, lo)
                return min(lo + (hi - lo) * (rank - seen) / c, self.max)
            seen += c
        return self.max

    def summary(self) -> dict[str, Any]:
        if self.count == 0:
            return {"count": 0}
        return {
            "count": self.count,
            "mean": round(self.total / self.count, 4),
            "p50": round(self.quantile(0.5) or 0.0, 4),
            "p90": round(self.quantile(0.9) or 0.0, 4),
            "p99": round(self.quantile(0.99) or 0.0, 4),
            "max": round(self.max, 4),
        }


DEFAULT_BUDGET_MS = 50.0
# Prometheus bucket bounds as fractions of the profile's p95 latency budget: dense around the budget, where
# an operator's question ("how often over budget?") is answered, sparse far from it. Twelve bounds plus +Inf.
BUDGET_FRACTIONS = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 10.0)


def budget_buckets(budget_ms: float = DEFAULT_BUDGET_MS) -> tuple[float, ...]:
    """Bucket upper bounds in ms around ``budget_ms``, rounded to 3 significant digits (readable ``le`` labels)."""
    return tuple(float(f"{budget_ms * f:.3g}") for f in BUDGET_FRACTIONS)


class StageLatencies:
    """One histogram per pipeline stage, cumulative, with per-period summaries.

    ``hist`` has fine log buckets (quantiles in the metric records); ``exposed`` has the dozen budget buckets
    Prometheus scrapes (a fine histogram there would be ~100 series per stage)."""

    def __init__(self, budget_ms: float = DEFAULT_BUDGET_MS) -> None:
        self.budget_ms = budget_ms
        self.hist = {s: LatencyHistogram() for s in STAGES}
        bounds = budget_buckets(budget_ms)
        self.exposed = {s: LatencyHistogram(bounds) for s in STAGES}
        self._mark = {s: h.copy() for s, h in self.hist.items()}

    def add(self, stage: str, ms: float) -> None:
        self.hist[stage].add(ms)
        self.exposed[stage].add(ms)

    def period_summary(self) -> dict[str, Any]:
        """Summaries of what was observed since the previous call."""
        out = {}
        for s, h in self.hist.items():
            out[s] = h.since(self._mark[s]).summary()
            self._mark[s] = h.copy()
        return out

    def cumulative_summary(self) -> dict[str, Any]:
        return {s: h.summary() for s, h in self.hist.items()}
