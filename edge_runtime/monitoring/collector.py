"""Sample selection under a collection policy: rules, per-class quotas, near-duplicate suppression.

Runs on the pipeline thread and stays cheap: the rules are comparisons; the perceptual hash (a 32x32 DCT, the
classic pHash) is computed only for an input a rule already chose, and compared against a bounded window of
recent kept hashes. What passes goes to :class:`~edge_runtime.monitoring.samples.SampleStore` (its writer thread
redacts and stores it). Every offered input is counted, and every one not kept is counted by the cause.
"""

from __future__ import annotations

import json
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.monitoring.collect import CollectionPolicy
from edge_runtime.monitoring.config import SampleConfig

if TYPE_CHECKING:
    from edge_runtime.monitoring.samples import SampleStore
    from edge_runtime.pipeline_types import FrameResult

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
            ts, label = m.get("kept_at"), m.get("class")
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
        """``ts``: wall-clock time (the quota periods are UTC hours or days); ``now``: monotonic (intervals)."""
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
        return {"reason": reason, "confidence": confidence, "class": cls, "kept_at": round(ts, 3),
                "phash": f"{h:016x}" if h is not None else None}


class Collection:
    """The collection policy in force on a monitor's sample store: its selector, redaction and upload marking.
    Without a policy (``selector`` None) the device's own sample config decides (SampleStore.offer)."""

    def __init__(self, samples: SampleStore, config: SampleConfig) -> None:
        self.samples, self.config = samples, config
        self.selector: Selector | None = None
        self.upload_allowed = False
        self.redaction = "[]"  # the redaction steps in force (JSON), recorded in each kept sample's metadata

    def set_policy(self, policy: CollectionPolicy | None, upload_allowed: bool) -> None:
        """Follow a (verified) policy from now on (any thread); None: back to the device's sample config.
        Samples are marked for upload only when the policy and the device config both allow it."""
        from edge_runtime.monitoring.redact import Redactor

        if policy is None:
            self.selector, self.upload_allowed = None, False
            self.samples.redactor, self.samples.max_bytes = None, self.config.max_bytes
            return
        selector = Selector(policy, self.config.seed)
        selector.quotas.seed(self.samples.list(), time.time())
        self.redaction = json.dumps([r.model_dump(mode="json") for r in policy.redact], sort_keys=True)
        for m in self.samples.pending():  # kept under other redaction steps: not uploaded under these
            if m.get("redaction") != self.redaction:
                self.samples.mark(m["id"], upload="withheld")
        self.samples.redactor = Redactor(policy.redact, self.config.redact_commands) if policy.redact else None
        self.samples.max_bytes = min(self.config.max_bytes, policy.max_disk_bytes)
        self.upload_allowed = upload_allowed and policy.upload
        self.selector = selector

    def offer(self, result: FrameResult, model: str, version: str, source: str = "") -> None:
        """One pipeline result (pipeline thread): kept by the policy's rules or not."""
        selector = self.selector
        if selector is None or result.frame is None:
            return
        p = result.prediction
        top = p.top
        label = (top.label or str(top.index)) if top is not None else None
        meta = selector.offer(result.frame, p.confidence, label, time.time())
        if meta is not None:
            meta.update(frame_index=result.index, ts=round(result.timestamp, 3), model=model, version=version,
                        source=result.source or source or None, redact=True, redaction=self.redaction,
                        **({"upload": "pending"} if self.upload_allowed else {}))
            self.samples.put(result.frame, meta)

    def describe(self) -> dict[str, Any] | None:
        """The selector's counts (offered, kept by reason, skipped by cause), None without a policy."""
        return dict(self.selector.counters) if self.selector is not None else None
