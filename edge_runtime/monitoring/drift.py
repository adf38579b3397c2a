"""Drift: is the recent window of inputs and answers still like the reference?

Per feature (monitoring.features) a verdict places the window's centre (median; mean for the class-mix share) in
the reference distribution: ``d`` is its rank z-score there, capped by its shift in units of the feature's
practical floor (reference.FeatureRef.distance). A median of tens of samples barely moves on in-distribution
data, however correlated consecutive frames are, which makes this usable on video, where per-sample tests (KS,
PSI on ~100 samples) alarm on any fixed scene.

False alarms are controlled in three ways. Across features (multiple testing): the threshold is the
Bonferroni-adjusted normal quantile ``z(1 - family_alpha / 2F)`` for F scored features (3.5 for six features at
the default 3-sigma family level). Across windows: an alarm needs ``confirm`` verdicts in a row over it. And
hysteresis: it clears only after ``confirm`` verdicts below ``clear_ratio`` of the threshold. The resulting rate
per 24 h of video is measured, not derived: see benchmarks/drift_figures.py.

Windows are set in samples and in time (``window`` samples, none older than ``window_s``); a verdict comes every
``every_samples`` samples or ``every_s`` seconds. With a device baseline nothing is scored until the warm-up has
learned it (``warmup_s`` seconds and ``warmup_samples`` samples).
"""

from __future__ import annotations

import logging
import math
from collections import Counter, deque
from dataclasses import dataclass
from statistics import NormalDist, fmean, median
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.monitoring.config import DriftConfig
from edge_runtime.monitoring.features import PROPORTIONS
from edge_runtime.monitoring.reference import Reference, load_reference

if TYPE_CHECKING:
    from pathlib import Path

    from edge_runtime.package.manifest import Manifest

log = logging.getLogger("edge_runtime.monitoring.monitor")


@dataclass(frozen=True)
class DriftScore:
    feature: str
    samples: int
    value: float  # the window's centre
    reference: float  # the reference's centre
    scale: float
    d: float  # distance in sigmas (reference.FeatureRef.distance)
    threshold: float
    drifted: bool  # the feature's alarm state after this verdict

    def to_dict(self) -> dict[str, Any]:
        r = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}
        r.pop("feature")
        return r


def threshold(features: int, family_alpha: float) -> float:
    """Bonferroni-adjusted two-sided normal critical value for ``features`` tests at family level ``family_alpha``."""
    return NormalDist().inv_cdf(1.0 - family_alpha / (2.0 * max(features, 1)))


class BaselineLearner:
    """Collects warm-up samples until there are enough, over a long enough time, to make a device baseline."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.values: dict[str, list[float]] = {}
        self.classes: list[int] = []
        self.first_ts: float | None = None
        self.last_ts: float | None = None
        self.samples = 0

    def add(self, features: dict[str, float], top: int | None, ts: float) -> None:
        self.first_ts = ts if self.first_ts is None else self.first_ts
        self.last_ts = ts
        self.samples += 1
        if self.samples > 8192 and self.samples % (self.samples // 4096):
            return  # a long warm-up keeps a thinning sample: bounded memory, the whole span still covered
        for k, v in features.items():
            if k != "class_mix":
                self.values.setdefault(k, []).append(v)
        if top is not None:
            self.classes.append(top)

    def ready(self) -> bool:
        span = 0.0 if self.first_ts is None or self.last_ts is None else self.last_ts - self.first_ts
        return self.samples >= self.config.warmup_samples and span >= self.config.warmup_s

    def progress(self) -> dict[str, Any]:
        span = 0.0 if self.first_ts is None or self.last_ts is None else self.last_ts - self.first_ts
        return {"kind": "device", "state": "warming_up", "samples": self.samples,
                "samples_needed": self.config.warmup_samples, "seconds": round(span, 1),
                "seconds_needed": self.config.warmup_s}


class DriftDetector:
    """``add()`` one sample's features (O(1)); it scores the window at the configured cadence and returns the
    scores whose alarm state changed. ``reference`` None with a device config: learn it first."""

    def __init__(self, config: DriftConfig, reference: Reference | None, model: str = "", version: str = "") -> None:
        self.config, self.reference, self.model, self.version = config, reference, model, version
        self.learner = BaselineLearner(config) if reference is None else None
        self.window: deque[tuple[float, dict[str, float], int | None]] = deque(maxlen=config.window)
        self.state: dict[str, bool] = {}
        self.last: dict[str, DriftScore] = {}
        self._streak: dict[str, int] = {}
        self._since_eval = 0
        self._last_eval_ts: float | None = None
        self.learned: Reference | None = None  # set once, when a warm-up has just finished (the caller saves it)

    @property
    def reference_kind(self) -> str:
        return self.reference.kind if self.reference is not None else "device-warming-up"

    @property
    def top_classes(self) -> frozenset[int] | None:
        return self.reference.top_classes if self.reference is not None else None

    def add(self, features: dict[str, float], top: int | None, ts: float) -> list[DriftScore]:
        if self.reference is None:
            assert self.learner is not None
            self.learner.add(features, top, ts)
            if self.learner.ready():
                self.reference = Reference.from_samples("device", self.model, self.version, self.learner.values,
                                                        self.learner.classes, self.config.top_classes)
                self.learned, self.learner = self.reference, None
            return []
        self.window.append((ts, features, top))
        self._since_eval += 1
        due = self._since_eval >= self.config.every_samples or (
            self._last_eval_ts is not None and ts - self._last_eval_ts >= self.config.every_s)
        if not due:
            return []
        self._since_eval, self._last_eval_ts = 0, ts
        return self.evaluate(ts)

    def evaluate(self, now: float) -> list[DriftScore]:
        assert self.reference is not None
        while self.window and now - self.window[0][0] > self.config.window_s:
            self.window.popleft()
        scored = {f: ref for f, ref in self.reference.features.items()}
        limit = threshold(len(scored), self.config.family_alpha)
        changed = []
        for name, ref in scored.items():
            vals = [s[name] for _, s, _ in self.window if name in s]
            if len(vals) < self.config.min_samples:
                continue
            centre = fmean(vals) if name in PROPORTIONS else median(vals)  # stdlib: ~50x numpy's cost here
            d = ref.distance(centre)
            if self._verdict(name, d, limit):
                changed.append(name)
            self.last[name] = DriftScore(name, len(vals), centre, ref.center, ref.scale, d, limit, self.state[name])
        return [self.last[n] for n in changed]

    def _verdict(self, name: str, d: float, limit: float) -> bool:
        """Hysteresis with confirmation; True when the alarm state flips."""
        on = self.state.get(name, False)
        crossing = d < limit * self.config.clear_ratio if on else d > limit
        streak = self._streak.get(name, 0) + 1 if crossing else 0
        self.state.setdefault(name, False)
        if streak >= self.config.confirm:
            self.state[name], self._streak[name] = not on, 0
            return True
        self._streak[name] = streak
        return False

    # ----------------------------------------------------------------- reports
    def describe_reference(self) -> dict[str, Any]:
        if self.reference is None:
            assert self.learner is not None
            return self.learner.progress()
        return self.reference.describe()

    def snapshot(self) -> dict[str, Any]:
        """For the metric record: the reference, per-feature scores and the window's prediction summary."""
        return {"reference": self.describe_reference(),
                "features": {name: s.to_dict() for name, s in self.last.items()},
                "predictions": self.prediction_summary()}

    def prediction_summary(self) -> dict[str, Any]:
        """What the fleet compares between canaries and a control group: confidence quantiles, top-k mass,
        the entropy of the top-1 class distribution and the most frequent classes, over the current window."""
        if not self.window:
            return {"samples": 0}
        rows = [s for _, s, _ in self.window]
        out: dict[str, Any] = {"samples": len(rows)}
        conf = [s["confidence"] for s in rows if "confidence" in s]
        if conf:
            q = np.quantile(conf, [0.1, 0.5, 0.9])
            out["confidence"] = {"p10": round(float(q[0]), 4), "p50": round(float(q[1]), 4),
                                 "p90": round(float(q[2]), 4)}
        mass = [s["topk_mass"] for s in rows if "topk_mass" in s]
        if mass:
            out["topk_mass_p50"] = round(float(np.median(mass)), 4)
        tops = Counter(t for _, _, t in self.window if t is not None)
        if tops:
            n = sum(tops.values())
            out["class_entropy_bits"] = round(-sum(c / n * math.log2(c / n) for c in tops.values()), 4)
            out["top_classes"] = {str(k): v for k, v in tops.most_common(5)}
        det = [s["detections"] for s in rows if "detections" in s]
        if det:
            out["detections_mean"] = round(float(np.mean(det)), 4)
        return out

    def exposition(self) -> dict[str, tuple[float, bool]]:
        """feature -> (d / threshold, alarm) for /metrics."""
        return {n: (s.d / s.threshold, self.state.get(n, False)) for n, s in self.last.items()}


def detector_for(cfg: DriftConfig, manifest: Manifest | None, baseline_file: Path | None) -> DriftDetector | None:
    """A detector on the configured reference kind; a device baseline is reloaded if it is this model's."""
    if not cfg.enabled or manifest is None:
        return None
    ref: Reference | None = None
    if cfg.reference == "package":
        if manifest.reference is None:
            log.warning("drift: package %s has no reference statistics; drift is not scored", manifest.name)
            return None
        ref = Reference.from_package(manifest.reference, manifest.name, manifest.version, cfg.top_classes)
    elif cfg.reference == "fleet":
        assert cfg.fleet_baseline is not None
        ref = load_reference(cfg.fleet_baseline, "fleet")
        if ref is None:
            log.warning("drift: no fleet baseline in %s; drift is not scored", cfg.fleet_baseline)
            return None
    elif baseline_file is not None:
        ref = load_reference(baseline_file, "device", manifest.name, manifest.version)
    return DriftDetector(cfg, ref, manifest.name, manifest.version)


def event_body(score: DriftScore, detector: DriftDetector) -> dict[str, Any]:
    """The body of a drift or drift_cleared event: feature, reference, scores and the thresholds behind them."""
    cfg = detector.config
    return {"feature": score.feature, "reference": detector.describe_reference(), "scores": score.to_dict(),
            "thresholds": {"d": round(score.threshold, 4), "clear": round(score.threshold * cfg.clear_ratio, 4),
                           "confirm": cfg.confirm}}
