"""Data drift against the package's reference statistics, over sliding windows.

Features: per-sample brightness (image inputs), raw input values (tensor inputs), per-channel means, top-1
confidence and the top-1 class. Each continuous feature is scored with PSI (binned on the reference's own
bins) and a two-sample Kolmogorov-Smirnov test (window vs. reference, evaluated at the reference bin edges,
with the reference's sample count as its size). Channel means are scored as a shift in reference standard
deviations; classes with PSI. A feature whose scores cross the configured thresholds raises one event; it is
re-armed once the scores fall back below. Definitions follow converters/refstats.py (pixels 0..255 in the
model's colour order; brightness = mean of a sample's pixels).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.monitoring.config import DriftConfig
from edge_runtime.package.manifest import Histogram, ReferenceStats

_EPS = 1e-4


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two proportion vectors (floored at 1e-4 to keep logs finite)."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _EPS)
    a = np.maximum(np.asarray(actual, dtype=np.float64), _EPS)
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def ks_critical(alpha: float, n: int, m: int) -> float:
    """Two-sample KS critical value c(alpha) * sqrt((n + m) / (n m))."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n + m) / (n * m))


def binned_scores(window: np.ndarray, ref: Histogram) -> tuple[float, float]:
    """(PSI, KS statistic) of window values against a reference histogram."""
    edges = np.asarray(ref.edges, dtype=np.float64)
    ref_p = np.asarray(ref.counts, dtype=np.float64)
    ref_p = ref_p / max(ref_p.sum(), _EPS)
    clipped = np.clip(window, edges[0], edges[-1])  # out-of-range values count in the outer bins
    counts, _ = np.histogram(clipped, bins=edges)
    win_p = counts / max(counts.sum(), 1)
    ks = float(np.max(np.abs(np.cumsum(win_p) - np.cumsum(ref_p))))
    return psi(ref_p, win_p), ks


@dataclass(frozen=True)
class DriftScore:
    feature: str
    samples: int
    psi: float | None
    ks: float | None
    ks_critical: float | None
    shift: float | None
    drifted: bool

    def to_dict(self) -> dict[str, Any]:
        r = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        return {k: v for k, v in r.items() if v is not None}


class DriftDetector:
    """Feed it per-sample features in O(1); ``evaluate()`` every N frames scores the windows."""

    def __init__(self, reference: ReferenceStats, config: DriftConfig) -> None:
        self.ref, self.config = reference, config
        w = config.window
        self.brightness: deque[float] = deque(maxlen=w)
        self.values: deque[float] = deque(maxlen=w * 16)
        self.channels: deque[np.ndarray | tuple[float, ...]] = deque(maxlen=w)
        self.confidence: deque[float] = deque(maxlen=w)
        self.top_class: deque[int] = deque(maxlen=w)
        self.state: dict[str, bool] = {}
        self.last: dict[str, DriftScore] = {}

    def add_image_means(self, means: tuple[float, ...]) -> None:
        """Per-channel mean pixel (model colour order) of one image: its brightness is their mean."""
        self.channels.append(means)
        self.brightness.append(sum(means) / len(means))

    def add_input(self, sample: np.ndarray, kind: str) -> None:
        """``sample``: an image (H, W, C) in the model's colour order, subsampled; or a tensor window."""
        x = np.asarray(sample, dtype=np.float32)
        if kind == "image":
            flat = x.reshape(-1, x.shape[2] if x.ndim == 3 else 1)
            means = flat.mean(axis=0)
            self.channels.append(means)
            self.brightness.append(float(means.mean()))
        else:
            flat = x.reshape(-1, x.shape[-1] if x.ndim else 1)
            self.channels.append(flat.mean(axis=0))
            step = max(1, flat.size // 16)
            self.values.extend(flat.ravel()[::step][:16].tolist())

    def add_output(self, confidence: float | None, top_class: int | None) -> None:
        if confidence is not None:
            self.confidence.append(confidence)
        if top_class is not None:
            self.top_class.append(top_class)

    def evaluate(self) -> list[tuple[DriftScore, bool]]:
        """Score every feature with enough samples; returns (score, changed) pairs (changed: crossed either way)."""
        scores = [s for s in (self._continuous("brightness", self.brightness, self.ref.brightness),
                              self._continuous("input_values", self.values, self.ref.input_values),
                              self._continuous("confidence", self.confidence, self.ref.confidence),
                              self._channels(), self._classes()) if s is not None]
        out = []
        for s in scores:
            before = self.state.get(s.feature, False)
            self.state[s.feature] = s.drifted
            self.last[s.feature] = s
            out.append((s, before != s.drifted))
        return out

    def _decide(self, flags: list[bool]) -> bool:
        return all(flags) if self.config.require == "all" else any(flags)

    def _continuous(self, name: str, window: deque[float], ref: Histogram | None) -> DriftScore | None:
        n = len(window) if name != "input_values" else len(window) // 16
        if ref is None or n < self.config.min_samples:
            return None
        p, ks = binned_scores(np.fromiter(window, dtype=np.float64), ref)
        crit = ks_critical(self.config.ks_alpha, max(n, 1), max(self.ref.samples, 1))
        drifted = self._decide([p > self.config.psi_threshold, ks > crit])
        return DriftScore(name, n, p, ks, crit, None, drifted)

    def _channels(self) -> DriftScore | None:
        if not self.ref.channel_mean or len(self.channels) < self.config.min_samples:
            return None
        win = np.asarray(self.channels, dtype=np.float64).mean(axis=0)
        mean = np.asarray(self.ref.channel_mean)
        std = np.maximum(np.asarray(self.ref.channel_std or (1.0,) * len(mean)), 1e-6)
        if win.shape != mean.shape:
            return None
        shift = float(np.max(np.abs(win - mean) / std))
        return DriftScore("channel_mean", len(self.channels), None, None, None, shift,
                          shift > self.config.channel_shift_threshold)

    def _classes(self) -> DriftScore | None:
        ref = self.ref.class_histogram
        if not ref or len(self.top_class) < self.config.min_samples:
            return None
        counts = np.bincount(np.clip(np.fromiter(self.top_class, dtype=np.int64), 0, len(ref) - 1),
                             minlength=len(ref))
        p = psi(np.asarray(ref), counts / counts.sum())
        return DriftScore("class", len(self.top_class), p, None, None, None, p > self.config.psi_threshold)

    reference_kind = "package"

    def exposition(self) -> dict[str, tuple[float, bool]]:
        return {name: (s.psi or s.shift or 0.0, self.state.get(name, False)) for name, s in self.last.items()}

    def snapshot(self) -> dict[str, Any]:
        return {name: s.to_dict() for name, s in self.last.items()}
