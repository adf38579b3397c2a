"""Typed, frozen results: what a prediction returns to an application, a sink or the monitor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScore:
    index: int
    score: float
    label: str | None = None


@dataclass(frozen=True)
class Detection:
    """A box in frame pixels (x1, y1, x2, y2), its score and class, optional keypoints [(x, y), ...]."""

    box: tuple[float, float, float, float]
    score: float
    class_index: int = 0
    label: str | None = None
    keypoints: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Timings:
    """Per-stage latency of one prediction, in milliseconds."""

    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0

    @property
    def total_ms(self) -> float:
        return self.preprocess_ms + self.inference_ms + self.postprocess_ms


@dataclass(frozen=True)
class Prediction:
    """One model call's result. ``task`` tells which of ``classes``/``detections``/``raw`` is filled."""

    task: str
    classes: tuple[ClassScore, ...] = ()
    detections: tuple[Detection, ...] = ()
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)
    model: str = ""
    version: str = ""

    @property
    def top(self) -> ClassScore | None:
        return self.classes[0] if self.classes else None

    @property
    def confidence(self) -> float | None:
        """The model's confidence in its answer: top class score, or best detection score."""
        if self.classes:
            return self.classes[0].score
        if self.detections:
            return max(d.score for d in self.detections)
        return None

    def to_dict(self, include_raw: bool = False) -> dict[str, Any]:
        """JSON-ready form, used by the JSON-lines sink and the HTTP service."""
        out: dict[str, Any] = {"task": self.task, "model": self.model, "version": self.version}
        if self.classes:
            out["classes"] = [{"index": c.index, "label": c.label, "score": round(c.score, 6)} for c in self.classes]
        if self.task == "detection":
            out["detections"] = [
                {
                    "box": [round(v, 2) for v in d.box],
                    "score": round(d.score, 6),
                    "class_index": d.class_index,
                    "label": d.label,
                    **({"keypoints": [[round(x, 2), round(y, 2)] for x, y in d.keypoints]} if d.keypoints else {}),
                }
                for d in self.detections
            ]
        if include_raw or self.task == "raw":
            out["raw"] = {k: np.asarray(v).tolist() for k, v in self.raw.items()}
        out["timings_ms"] = {
            "preprocess": round(self.timings.preprocess_ms, 3),
            "inference": round(self.timings.inference_ms, 3),
            "postprocess": round(self.timings.postprocess_ms, 3),
        }
        return out
