"""Latency statistics and paired ratios from interleaved rounds.

Percentiles use numpy's default linear interpolation over the timed inferences (warm-up excluded), as
onnxruntime_perf_test and TFLite's benchmark_model report them. Spread is the IQR (and MAD) because latency
distributions have long right tails that make the standard deviation misleading.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.benchmark.schema import LatencyStats, RatioResult


def summarize(samples_ms: Sequence[float]) -> LatencyStats:
    """Summarise per-inference latencies (milliseconds)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no samples to summarise")
    p25, p50, p75, p90, p99 = np.percentile(x, [25, 50, 75, 90, 99])
    return LatencyStats(
        count=int(x.size),
        mean_ms=float(x.mean()),
        std_ms=float(x.std()),
        min_ms=float(x.min()),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        max_ms=float(x.max()),
        iqr_ms=float(p75 - p25),
        mad_ms=float(np.median(np.abs(x - p50))),
        rel_spread=float((p75 - p25) / p50) if p50 > 0 else 0.0,
    )


def round_medians(rounds_ms: Sequence[Sequence[float]]) -> list[float]:
    """Median latency of each round (empty rounds skipped)."""
    return [float(np.median(r)) for r in rounds_ms if len(r)]


def paired_speedup(
    variant: str,
    baseline: str,
    variant_rounds: Sequence[float],
    baseline_rounds: Sequence[float],
    size_ratio: float | None = None,
) -> RatioResult:
    """Speedup of `variant` over `baseline` from per-round medians measured side by side.

    Each round ran both variants back to back, so the ratio within a round cancels slow drifts of the machine
    (thermal, other load); the median and quartiles over rounds give the figure and its spread.
    """
    n = min(len(variant_rounds), len(baseline_rounds))
    if n == 0:
        raise ValueError("no common rounds")
    v = np.asarray(variant_rounds[:n], dtype=np.float64)
    b = np.asarray(baseline_rounds[:n], dtype=np.float64)
    ratios = b / v
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    return RatioResult(
        variant=variant,
        baseline=baseline,
        speedup=float(med),
        speedup_q1=float(q1),
        speedup_q3=float(q3),
        size_ratio=size_ratio,
    )


def ratio_rel_spread(r: RatioResult) -> float:
    """(q3 - q1) / median of a paired ratio."""
    return (r.speedup_q3 - r.speedup_q1) / r.speedup if r.speedup > 0 else 0.0


def split_runs(total: int, rounds: int) -> list[int]:
    """Split `total` timed runs over `rounds` as evenly as possible (each round gets at least one)."""
    rounds = max(1, min(rounds, total))
    base, extra = divmod(total, rounds)
    return [base + (1 if i < extra else 0) for i in range(rounds)]


def top1(outputs: np.ndarray) -> np.ndarray:
    """argmax over every axis but the first (samples)."""
    return outputs.reshape(outputs.shape[0], -1).argmax(axis=1)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity between matching rows of two [N, ...] arrays."""
    a2 = a.reshape(a.shape[0], -1).astype(np.float64)
    b2 = b.reshape(b.shape[0], -1).astype(np.float64)
    num = (a2 * b2).sum(axis=1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    sims = np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)
    return float(sims.mean())
