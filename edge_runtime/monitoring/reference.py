"""Drift references: what "normal" is for this device, and where that knowledge came from.

Three kinds, one shape (per feature a sorted sample of values, plus the reference's most frequent classes):

- ``package``: the package's reference statistics (calibration data or the reference set given to `convert`),
  expanded from its histograms. Only brightness, confidence and the class mix are known there.
- ``device``: learned on the device during a warm-up after the model goes live (the default, right for fixed
  cameras, whose one scene is never the calibration mix); persisted across restarts in a JSON file, and
  relearned when the model changes (the file names the model and version it belongs to).
- ``fleet``: a baseline the fleet side computed (e.g. over a control group) and pushed as the same JSON.

Every drift event carries :meth:`Reference.describe`, so an alarm always says what it was compared with.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.fsutil import atomic_write_text
from edge_runtime.monitoring.features import PROPORTIONS, SCALE_FLOORS
from edge_runtime.package.manifest import Histogram, ReferenceStats

log = logging.getLogger(__name__)
SCHEMA = "drift-reference/1"
KEEP = 512  # values kept per feature (quantiles of the reference sample)
COVER = 0.9  # the reference's frequent classes: the fewest covering this share of its samples


@dataclass(frozen=True)
class FeatureRef:
    """A feature's reference sample (sorted), its centre, robust scale and practical floor (features.SCALE_FLOORS)."""

    values: np.ndarray
    center: float
    scale: float

    floor: float = 1e-6
    proportion: bool = False

    def distance(self, centre: float) -> float:
        """How far a window's centre is from the reference, in sigmas (0 when typical, about 3 at the edge of a
        3-sigma band). Continuous features: the smaller of (a) the centre's rank z-score in the reference sample,
        ``|inverse normal CDF(mid-rank / n)|`` (robust to any shape; beyond the sample's range it is
        extrapolated with the robust scale) and (b) the shift in units of the feature's practical floor (a
        steady fixed camera is not in alarm over a change nobody would notice). Proportions (class_mix): the
        drop of the share in binomial sigmas."""
        if self.proportion:
            return max(0.0, (self.center - centre) / self.scale)
        v, n = self.values, self.values.size
        edge = NormalDist().inv_cdf(1.0 - 0.5 / n)
        if centre < v[0]:
            rank_z = edge + (v[0] - centre) / self.scale
        elif centre > v[-1]:
            rank_z = edge + (centre - v[-1]) / self.scale
        else:
            below, upto = np.searchsorted(v, centre, "left"), np.searchsorted(v, centre, "right")
            q = min(max((below + 0.5 * (upto - below)) / n, 0.5 / n), 1.0 - 0.5 / n)
            rank_z = abs(NormalDist().inv_cdf(float(q)))
        return min(rank_z, abs(centre - self.center) / self.floor)

    @classmethod
    def of(cls, name: str, values: np.ndarray) -> FeatureRef:
        v = np.sort(np.asarray(values, dtype=np.float64))
        if v.size > KEEP:
            v = np.quantile(v, np.linspace(0, 1, KEEP))
        q16, q50, q84 = np.quantile(v, [0.16, 0.5, 0.84])
        mad = 1.4826 * float(np.median(np.abs(v - q50)))
        floor = SCALE_FLOORS.get(name, 1e-6)
        if name in PROPORTIONS:
            p = float(v.mean())
            return cls(v, p, max(float(np.sqrt(p * (1 - p))), floor), floor, True)
        return cls(v, float(q50), max(mad, float(q84 - q16) / 2.0, floor), floor)


@dataclass(frozen=True)
class Reference:
    kind: str  # package | device | fleet
    model: str
    version: str
    samples: int
    features: dict[str, FeatureRef]
    top_classes: frozenset[int] = frozenset()
    created: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "version": self.version, "samples": self.samples,
                "created": round(self.created, 3), "features": sorted(self.features)}

    # ----------------------------------------------------------------- building
    @classmethod
    def from_samples(cls, kind: str, model: str, version: str, values: dict[str, list[float]],
                     classes: list[int], top_classes: int) -> Reference:
        """From warm-up samples: per-feature values and the top-1 class index of each sample."""
        top = frequent_classes(Counter(classes), top_classes)
        feats = {k: FeatureRef.of(k, np.asarray(v)) for k, v in values.items() if len(v) >= 2}
        if top and classes:
            feats["class_mix"] = FeatureRef.of("class_mix", np.asarray([c in top for c in classes], dtype=float))
        n = max((len(v) for v in values.values()), default=0)
        return cls(kind, model, version, n, feats, frozenset(top))

    @classmethod
    def from_package(cls, ref: ReferenceStats, model: str, version: str, top_classes: int) -> Reference:
        feats: dict[str, FeatureRef] = {}
        for name, hist in (("brightness", ref.brightness), ("confidence", ref.confidence)):
            if hist is not None and sum(hist.counts) > 0:
                feats[name] = FeatureRef.of(name, _expand(hist))
        top: list[int] = []
        if ref.class_histogram:
            props = np.asarray(ref.class_histogram, dtype=np.float64)
            top = frequent_classes(Counter({i: float(p) for i, p in enumerate(props) if p > 0}), top_classes)
            mass = float(props[top].sum() / max(props.sum(), 1e-12)) if top else 0.0
            n = max(ref.samples, 1)
            hits = round(mass * n)
            feats["class_mix"] = FeatureRef.of("class_mix", np.r_[np.ones(hits), np.zeros(n - hits)])
        return cls("package", model, version, ref.samples, feats, frozenset(top))

    # ----------------------------------------------------------------- files
    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **self.describe(), "top_classes": sorted(self.top_classes),
                           "values": {k: [round(float(x), 5) for x in f.values] for k, f in self.features.items()}})

    @classmethod
    def from_json(cls, text: str, kind: str | None = None) -> Reference:
        """Parse a reference file (ConfigError with one line when it is not one)."""
        try:
            doc = json.loads(text)
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
                raise ValueError(f"not a {SCHEMA} document")
            feats = {str(k): FeatureRef.of(str(k), np.asarray(v, dtype=np.float64))
                     for k, v in dict(doc["values"]).items() if len(v) >= 1}
            return cls(kind or str(doc["kind"]), str(doc["model"]), str(doc["version"]), int(doc["samples"]),
                       feats, frozenset(int(c) for c in doc.get("top_classes", [])), float(doc.get("created", 0)))
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise ConfigError(f"drift reference: {exc}") from exc

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())


def load_reference(path: Path, kind: str, model: str | None = None, version: str | None = None) -> Reference | None:
    """The reference in ``path``, or None when it is missing or (for a device baseline) belongs to another model."""
    try:
        ref = Reference.from_json(path.read_text(), kind)
    except FileNotFoundError:
        return None
    except (OSError, ConfigError) as exc:
        log.warning("ignoring the drift reference %s: %s", path, exc)
        return None
    if model is not None and (ref.model, ref.version) != (model, version):
        log.info("drift baseline %s is for %s %s, not %s %s: learning a new one", path, ref.model, ref.version,
                 model, version)
        return None
    return ref


def frequent_classes(counts: Counter, cap: int) -> list[int]:
    """The fewest most frequent classes covering COVER of the counts, at most ``cap``."""
    total = sum(counts.values())
    out: list[int] = []
    seen = 0.0
    for cls_, n in counts.most_common(cap):
        if seen >= COVER * total:
            break
        out.append(int(cls_))
        seen += n
    return out


def _expand(h: Histogram, points: int = 256) -> np.ndarray:
    """Quantile points of a histogram (linear inside each bin)."""
    edges = np.asarray(h.edges, dtype=np.float64)
    cdf = np.r_[0.0, np.cumsum(np.asarray(h.counts, dtype=np.float64))]
    cdf /= cdf[-1]
    return np.interp((np.arange(points) + 0.5) / points, cdf, edges)
