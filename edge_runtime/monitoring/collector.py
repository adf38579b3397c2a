"""Sample selection under a collection policy: rules, per-class quotas, near-duplicate suppression.

Runs on the pipeline thread and stays cheap: the rules are comparisons; the perceptual hash (a 32x32 DCT, the
classic pHash) is computed only for an input a rule already chose, and compared against a bounded window of
recent kept hashes. What passes goes to :class:`~edge_runtime.monitoring.samples.SampleStore` (its writer thread
redacts and stores it). Every offered input is counted, and every one not kept is counted by the cause.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

import numpy as np

from edge_runtime.monitoring.collect import CollectionPolicy

_PERIOD_S = {"hour": 3600, "day": 86400}


def phash(img: np.ndarray) -> int:
    """64-bit DCT perceptual hash: 32x32 grey, DCT, the 8x8 lowest frequencies against their median."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 3:
        a = cv2.cvtColor(a[:, :, :3], cv2.COLOR_BGR2GRAY) if a.shape[2] >= 3 else a[:, :, 0]
    small = cv2.resize(a.astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].flatten()
    med = np.median(low[1:])  # the DC term would dominate the median
    bits = low > med
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


class Quotas:
    """Samples kept per predicted class in the current hour or day (UTC), against per-class limits."""

    def __init__(self, policy: CollectionPolicy) -> None:
        self.limits, self.default = policy.class_quotas, policy.class_quota
        self.period = _PERIOD_S[policy.quota_period]
        self.counts: dict[str, int] = {}
        self._bucket = -1

    def _roll(self, ts: float) -> None:
        bucket = int(ts // self.period)
        if bucket != self._bucket:
            self._bucket, self.counts = bucket, {}

    def full(self, label: str, ts: float) -> bool:
        self._roll(ts)
        limit = self.limits.get(label, self.default)
        return limit is not None and self.counts.get(label, 0) >= limit

    def add(self, label: str, ts: float) -> None:
        self._roll(ts)
        self.counts[label] = self.counts.get(label, 0) + 1

    def seed(self, kept: list[dict[str, Any]], now: float) -> None:
        """Count samples already kept in this period (a restart must not reset the quota)."""
        self._roll(now)
        for m in kept:
            ts, label = m.get("ts"), m.get("class")
            if isinstance(ts, (int, float)) and isinstance(label, str) and int(ts // self.period) == self._bucket:
                self.counts[label] = self.counts.get(label, 0) + 1


class Selector:
    """Decides, per input, whether the policy keeps it; returns the sample's metadata or None."""

    def __init__(self, policy: CollectionPolicy, seed: int | None = None) -> None:
        self.policy = policy
        self.quotas = Quotas(policy)
        self._rng = random.Random(seed)  # noqa: S311 - sampling, not security
        self._hashes: deque[int] = deque(maxlen=policy.dedup.window if policy.dedup else 1)
        self._drift_until = 0.0
        self._drift_left = 0
        self._last = 0.0
        self.counters: dict[str, int] = {"offered": 0, "kept": 0, "low_confidence": 0, "random": 0, "drift": 0,
                                         "skipped_rule": 0, "skipped_interval": 0, "skipped_quota": 0,
                                         "skipped_duplicate": 0}

    def on_drift(self, now: float | None = None) -> None:
        rule = self.policy.on_drift
        if rule is not None:
            self._drift_until = (time.monotonic() if now is None else now) + rule.seconds
            self._drift_left = rule.frames

    def _reason(self, confidence: float | None, now: float) -> str | None:
        p = self.policy
        if self._drift_left > 0 and now < self._drift_until:
            self._drift_left -= 1
            return "drift"
        if p.low_confidence is not None and confidence is not None and confidence < p.low_confidence:
            return "low_confidence"
        if p.random_rate and self._rng.random() < p.random_rate:
            return "random"
        return None

    def offer(self, frame: np.ndarray, confidence: float | None, label: str | None, ts: float,
              now: float | None = None) -> dict[str, Any] | None:
        c = self.counters
        c["offered"] += 1
        now = time.monotonic() if now is None else now
        reason = self._reason(confidence, now)
        if reason is None:
            c["skipped_rule"] += 1
            return None
        if now - self._last < self.policy.min_interval_s:
            c["skipped_interval"] += 1
            return None
        cls = label if label is not None else "_none"
        if self.quotas.full(cls, ts):
            c["skipped_quota"] += 1
            return None
        h = phash(frame) if frame.ndim in (2, 3) and frame.shape[0] >= 8 and frame.shape[1] >= 8 else None
        dedup = self.policy.dedup
        if h is not None and dedup is not None:
            if any(hamming(h, old) <= dedup.max_distance for old in self._hashes):
                c["skipped_duplicate"] += 1
                return None
            self._hashes.append(h)
        self._last = now
        self.quotas.add(cls, ts)
        c["kept"] += 1
        c[reason] += 1
        return {"reason": reason, "confidence": confidence, "class": cls,
                "phash": f"{h:016x}" if h is not None else None}
