"""The accuracy guard's statistics: Wilson intervals, margin-weighted top-1 flips, and a three-way decision.

A held-back set of 20 samples cannot tell a 98 % agreement from a 95 % one: one flip moves the raw ratio by five
points. So the guard decides on confidence bounds (95 %, Wilson score) and says "undecided" when the interval
straddles the budget, with the number of samples that would settle it at the rates measured. Without labels, a
top-1 flip counts by the float model's margin between its two best classes (a flip between near-equal classes is
not a regression); with labels, the guard judges the accuracy drop itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 %
FULL_MARGIN = 0.2  # a flip counts fully when the float model's top-1 leads its runner-up by this much probability
STRONG_COSINE = 0.995  # outputs this close are never refused on top-1 agreement alone
MAX_NEEDED = 1_000_000
Decision = Literal["pass", "fail", "undecided"]


def wilson(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``successes / n`` (``successes`` may be fractional: weighted flips)."""
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def probabilities(scores: np.ndarray, activation: str) -> np.ndarray:
    """Class probabilities from a score vector: softmax of logits, sigmoid, or the scores as they are."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    if activation == "softmax":
        e = np.exp(s - s.max())
        return e / e.sum()
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-np.clip(s, -60, 60)))
    return s


def flip_weight(float_scores: np.ndarray, activation: str) -> float:
    """How much a top-1 flip on this sample counts: the float model's top-1 margin over FULL_MARGIN, at most 1."""
    p = probabilities(float_scores, activation)
    if p.size < 2:
        return 1.0
    top2 = np.partition(p, -2)[-2:]
    return float(min(1.0, max(0.0, (top2[1] - top2[0]) / FULL_MARGIN)))


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    needed: int | None = None  # samples that would settle an undecided case at the measured rates


def needed_samples(rate: float, limit: float, offset: float = 0.0) -> int | None:
    """Smallest n at which the Wilson interval of ``rate`` (minus ``offset``) clears ``limit`` on one side:
    the upper bound falls to ``limit`` when rate - offset < limit, else the lower bound rises above it."""
    below = rate - offset < limit

    def settled(n: int) -> bool:
        lo, hi = wilson(rate * n, n)
        return hi - offset <= limit if below else lo - offset > limit

    if rate - offset == limit:
        return None
    hi_n = 1
    while not settled(hi_n):
        hi_n *= 2
        if hi_n > MAX_NEEDED:
            return None
    lo_n = hi_n // 2
    while lo_n + 1 < hi_n:
        mid = (lo_n + hi_n) // 2
        lo_n, hi_n = (lo_n, mid) if settled(mid) else (mid, hi_n)
    return hi_n


def _too_few(need: int | None, within: bool) -> str:
    if need is None:
        return "too few samples to decide"
    settle = "show the budget is met" if within else "confirm a miss"
    return f"too few samples to decide: need {need} held-back samples (at the rates measured they would {settle})"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def decide_accuracy(n: int, float_ok: int, int8_ok: int, regressions: int, gains: int, max_drop: float) -> Verdict:
    """Labelled data: the int8 accuracy drop against ``max_drop``. Regressions (float right, int8 wrong) are the
    uncertain part; gains (int8 right where float was wrong) are subtracted as counted."""
    drop = (regressions - gains) / n
    lo, hi = (b - gains / n for b in wilson(regressions, n))
    facc, qacc = float_ok / n, int8_ok / n
    fl, fh = wilson(float_ok, n)
    ql, qh = wilson(int8_ok, n)
    what = (f"accuracy float {_pct(facc)} [{_pct(fl)}, {_pct(fh)}], int8 {_pct(qacc)} [{_pct(ql)}, {_pct(qh)}] "
            f"on {n} labelled samples: drop {_pct(drop)} (95% bounds {_pct(lo)}..{_pct(hi)}, "
            f"budget {_pct(max_drop)})")  # fmt: skip
    if lo > max_drop:
        return Verdict("fail", what)
    if hi <= max_drop:
        return Verdict("pass", what)
    need = needed_samples(regressions / n, max_drop, gains / n)
    return Verdict("undecided", f"{what}; {_too_few(need, drop <= max_drop)}", need)


def decide_agreement(n: int, weighted_flips: float, flips: int, cosine: float, min_agreement: float) -> Verdict:
    """No labels: margin-weighted top-1 flips against the allowed disagreement, combined with the output cosine."""
    allowed = 1 - min_agreement
    lo, hi = wilson(weighted_flips, n)
    what = (f"{flips} top-1 flip(s) in {n} ({weighted_flips:.2f} weighted by float margin; 95% bounds "
            f"{_pct(lo)}..{_pct(hi)} vs {_pct(allowed)} allowed), cosine {cosine:.4f}")  # fmt: skip
    if lo > allowed:
        if cosine >= STRONG_COSINE:
            return Verdict("undecided", f"{what}: outputs agree at cosine >= {STRONG_COSINE}, not refused on "
                           "agreement alone; give labelled --validation data to judge accuracy")  # fmt: skip
        return Verdict("fail", what)
    if hi <= allowed:
        return Verdict("pass", what)
    need = needed_samples(weighted_flips / n, allowed)
    return Verdict("undecided", f"{what}; {_too_few(need, weighted_flips / n <= allowed)}", need)


def decide_cosine(cosine: float, min_cosine: float) -> Verdict:
    ok = cosine >= min_cosine
    return Verdict("pass" if ok else "fail", f"cosine {cosine:.4f} {'>=' if ok else '<'} {min_cosine}")
