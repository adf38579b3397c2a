"""Prediction quality without labels: class histogram, confidence histogram, detections per frame."""

from __future__ import annotations

from typing import Any

from edge_runtime.results import Prediction

CONFIDENCE_BINS = 10
MAX_DETECTIONS_BIN = 10  # the last bin counts frames with 10 or more detections


class QualityStats:
    """Per-frame O(1) counters (O(detections) for detection models)."""

    def __init__(self, num_classes: int | None = None, labels: tuple[str, ...] | None = None) -> None:
        self.labels = labels
        self.classes: dict[int, int] = {}
        self.confidence = [0] * CONFIDENCE_BINS
        self.detections_per_frame = [0] * (MAX_DETECTIONS_BIN + 1)
        self.detections_by_class: dict[int, int] = {}
        self.frames = 0
        self.num_classes = num_classes

    def add(self, p: Prediction) -> None:
        self.frames += 1
        conf = p.confidence
        if conf is not None:
            self.confidence[min(CONFIDENCE_BINS - 1, max(0, int(conf * CONFIDENCE_BINS)))] += 1
        if p.classes:
            top = p.classes[0].index
            self.classes[top] = self.classes.get(top, 0) + 1
        if p.task == "detection":
            self.detections_per_frame[min(len(p.detections), MAX_DETECTIONS_BIN)] += 1
            for d in p.detections:
                self.detections_by_class[d.class_index] = self.detections_by_class.get(d.class_index, 0) + 1

    def snapshot(self, reset: bool = True) -> dict[str, Any]:
        """JSON-ready histograms since the last reset."""
        out: dict[str, Any] = {"frames": self.frames, "confidence_histogram": list(self.confidence)}
        if self.classes:
            out["class_histogram"] = {self._name(k): v for k, v in sorted(self.classes.items())}
        if any(self.detections_per_frame):
            out["detections_per_frame"] = list(self.detections_per_frame)
            out["detections_by_class"] = {self._name(k): v for k, v in sorted(self.detections_by_class.items())}
        if reset:
            self.__init__(self.num_classes, self.labels)  # type: ignore[misc]
        return out

    def _name(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)
