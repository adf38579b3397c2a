"""How the update agent loads, smoke-tests and shadows models: a small protocol plus the real implementation.

The real one uses :func:`edge_runtime.api.load` (hashes and signature checked before the model file is opened)
and :func:`edge_runtime.golden.smoke_test` (golden pairs within tolerance, latency within the profile budget).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge_runtime.package.signing import TrustStore


class ModelRuntime(Protocol):
    def load(self, path: Path) -> Any: ...

    def smoke(self, model: Any, budget_ms: float | None) -> tuple[bool, list[str]]: ...

    def close(self, model: Any) -> None: ...


class PackageRuntime:
    """The runtime the device uses: edge_runtime.api + edge_runtime.golden, imported when first needed."""

    def __init__(self, profile: str, trust: TrustStore) -> None:
        self.profile = profile
        self.trust = trust

    def load(self, path: Path) -> Any:
        from edge_runtime.api import load

        return load(path, trust=self.trust, profile=self.profile)

    def smoke(self, model: Any, budget_ms: float | None) -> tuple[bool, list[str]]:
        from edge_runtime.golden import smoke_test

        report = smoke_test(model, budget_ms)
        return bool(report.passed), [str(r) for r in report.reasons]

    def close(self, model: Any) -> None:
        close = getattr(model, "close", None)
        if callable(close):
            close()


def prediction_ok(pred: Any) -> bool:
    """A prediction counts as an error in the health window when its scores or raw outputs are not finite."""
    for c in getattr(pred, "classes", ()):
        if not math.isfinite(c.score):
            return False
    for d in getattr(pred, "detections", ()):
        if not math.isfinite(d.score):
            return False
    return all(bool(np.isfinite(a).all()) for a in getattr(pred, "raw", {}).values() if np.asarray(a).dtype.kind == "f")


def agree(a: Any, b: Any) -> bool:
    """Shadow agreement: same top-1 class; same number of detections; raw outputs close (cosine >= 0.99)."""
    if getattr(a, "classes", ()) or getattr(b, "classes", ()):
        ta, tb = getattr(a, "top", None), getattr(b, "top", None)
        return ta is not None and tb is not None and ta.index == tb.index
    if getattr(a, "task", "") == "detection":
        return len(a.detections) == len(b.detections)
    ra, rb = getattr(a, "raw", {}), getattr(b, "raw", {})
    for k in ra.keys() & rb.keys():
        x, y = np.asarray(ra[k], np.float64).ravel(), np.asarray(rb[k], np.float64).ravel()
        if x.shape != y.shape:
            return False
        denom = float(np.linalg.norm(x) * np.linalg.norm(y)) or 1.0
        if float(x @ y) / denom < 0.99:
            return False
    return True
