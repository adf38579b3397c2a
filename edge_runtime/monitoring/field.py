"""Field accuracy: labels for predictions (by id) joined with what the device predicted, over windows.

A prediction's id is its sample index in this run (``index`` in `run`'s JSON lines). The last ``keep``
predictions are remembered (bounded); a label for one of them gives a classification outcome (top-1 correct or
not) or, for detection, true/false positives and misses at the deployed score threshold (greedy IoU matching).
Over the last ``window`` labels this gives accuracy, or precision and recall, reported in every metric record
and on /metrics. When the figure falls ``max_drop`` below the first full window's (or under ``min_accuracy``),
for ``confirm`` windows in a row, an ``accuracy_decay`` event is raised; ``accuracy_recovered`` when it is back
within half that drop. Labels come through the local API (POST /feedback) or a signed MQTT feedback message.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edge_runtime.monitoring.config import FieldConfig
from edge_runtime.results import Prediction


@dataclass(frozen=True)
class _Stored:
    task: str
    top: int | None
    boxes: tuple[tuple[tuple[float, float, float, float], int], ...]


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(pred: tuple[tuple[tuple[float, float, float, float], int], ...], truth: list[tuple[tuple[float, ...], int]],
          min_iou: float) -> tuple[int, int, int]:
    """(true positives, false positives, misses): each true box matched at most once, same class, best IoU."""
    used: set[int] = set()
    tp = 0
    for box, cls in pred:
        best, best_j = min_iou, None
        for j, (tbox, tcls) in enumerate(truth):
            if j not in used and tcls == cls and (v := iou(box, tbox)) >= best:
                best, best_j = v, j
        if best_j is not None:
            used.add(best_j)
            tp += 1
    return tp, len(pred) - tp, len(truth) - tp


class FeedbackError(ValueError):
    """A label that cannot be used (one line for the caller)."""


class FieldAccuracy:
    """Thread-safe: predictions are recorded on the pipeline thread, labels arrive on HTTP or MQTT threads."""

    def __init__(self, config: FieldConfig, labels: tuple[str, ...] | None = None) -> None:
        self.config, self.labels = config, labels
        self._lock = threading.Lock()
        self._preds: OrderedDict[int, _Stored] = OrderedDict()
        self._outcomes: deque[tuple[int, int, int]] = deque(maxlen=config.window)  # (tp, fp, fn) or (ok, 1-ok, 0)
        self.counts = {"joined": 0, "unknown_id": 0, "duplicate": 0, "invalid": 0}
        self._labelled: set[int] = set()
        self.task: str | None = None
        self.baseline: float | None = None
        self.decayed = False
        self._streak = 0
        self._period_labels = 0

    def record(self, index: int, p: Prediction) -> None:
        boxes = tuple((tuple(float(v) for v in d.box), int(d.class_index)) for d in p.detections)
        stored = _Stored(p.task, p.classes[0].index if p.classes else None, boxes)  # type: ignore[arg-type]
        with self._lock:
            self.task = p.task
            self._preds[index] = stored
            while len(self._preds) > self.config.keep:
                self._preds.popitem(last=False)

    # ----------------------------------------------------------------- labels
    def label(self, item: Any) -> str:
        """Join one label ({"id": N, "label": name-or-index} or {"id": N, "boxes": [[x1, y1, x2, y2, class?]]}).
        Returns joined, unknown_id or duplicate; raises FeedbackError for a malformed one (counted invalid)."""
        try:
            pid, outcome_of = self._parse(item)
        except FeedbackError:
            with self._lock:
                self.counts["invalid"] += 1
            raise
        with self._lock:
            stored = self._preds.get(pid)
            if stored is None:
                self.counts["unknown_id"] += 1
                return "unknown_id"
            if pid in self._labelled:
                self.counts["duplicate"] += 1
                return "duplicate"
            self._labelled.add(pid)
            if len(self._labelled) > 4 * self.config.keep:
                self._labelled = {k for k in self._labelled if k in self._preds}
            self._outcomes.append(outcome_of(stored))
            self.counts["joined"] += 1
            self._period_labels += 1
            return "joined"

    def _parse(self, item: Any) -> tuple[int, Any]:
        if not isinstance(item, dict) or "id" not in item:
            raise FeedbackError("a label is an object with an 'id' (the prediction's sample index)")
        try:
            pid = int(item["id"])
        except (TypeError, ValueError) as exc:
            raise FeedbackError(f"label id {item['id']!r} is not a sample index") from exc
        if "boxes" in item:
            truth = self._boxes(item["boxes"])
            return pid, lambda s: match(s.boxes, truth, self.config.min_iou)
        if "label" in item:
            cls = self._class(item["label"])
            return pid, lambda s: (1, 0, 0) if s.top == cls else (0, 1, 0)
        raise FeedbackError("a label needs 'label' (classification) or 'boxes' (detection)")

    def _class(self, label: Any) -> int:
        if isinstance(label, bool) or not isinstance(label, int | str):
            raise FeedbackError("'label' is a class name or index")
        if isinstance(label, int):
            return label
        if self.labels and label in self.labels:
            return self.labels.index(label)
        if label.isdigit():
            return int(label)
        raise FeedbackError(f"unknown class {label[:60]!r}")

    def _boxes(self, boxes: Any) -> list[tuple[tuple[float, ...], int]]:
        if not isinstance(boxes, list) or len(boxes) > 1000:
            raise FeedbackError("'boxes' is a list (at most 1000) of [x1, y1, x2, y2] or [x1, y1, x2, y2, class]")
        out = []
        for b in boxes:
            if not isinstance(b, list) or len(b) not in (4, 5) or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in b):
                raise FeedbackError("each box is [x1, y1, x2, y2] or [x1, y1, x2, y2, class] of finite numbers")
            out.append((tuple(float(v) for v in b[:4]), int(b[4]) if len(b) == 5 else 0))
        return out

    # ----------------------------------------------------------------- figures
    def figures(self) -> dict[str, Any]:
        """Accuracy (classification) or precision and recall (detection) over the window of labels."""
        with self._lock:
            outcomes = list(self._outcomes)
        out: dict[str, Any] = {"labels_in_window": len(outcomes)}
        if not outcomes:
            return out
        tp, fp, fn = (sum(o[i] for o in outcomes) for i in range(3))
        if self.task == "detection":
            out["precision"] = round(tp / (tp + fp), 4) if tp + fp else None
            out["recall"] = round(tp / (tp + fn), 4) if tp + fn else None
        else:
            out["accuracy"] = round(tp / len(outcomes), 4)
        return out

    def headline(self, figures: dict[str, Any]) -> float | None:
        """The figure decay is watched on: accuracy, or for detection the lower of precision and recall."""
        if "accuracy" in figures:
            return figures["accuracy"]
        vals = [v for v in (figures.get("precision"), figures.get("recall")) if v is not None]
        return min(vals) if vals else None

    def check(self) -> tuple[str, dict[str, Any]] | None:
        """Once per metric period: (event type, body) when decay starts or ends, else None."""
        f = self.figures()
        value = self.headline(f)
        if value is None or f["labels_in_window"] < self.config.min_labels:
            return None
        if self.baseline is None:
            self.baseline = value
        limit = self.baseline - self.config.max_drop
        if self.config.min_accuracy is not None:
            limit = max(limit, self.config.min_accuracy)
        crossing = value >= limit + self.config.max_drop / 2 if self.decayed else value < limit
        self._streak = self._streak + 1 if crossing else 0
        if self._streak < self.config.confirm:
            return None
        self._streak, self.decayed = 0, not self.decayed
        kind = "accuracy_decay" if self.decayed else "accuracy_recovered"
        return kind, {"figures": f, "value": value, "baseline": self.baseline, "limit": round(limit, 4)}

    def snapshot(self) -> dict[str, Any]:
        """For the metric record's quality section; resets the per-period label count."""
        with self._lock:
            period, counts = self._period_labels, dict(self.counts)
            self._period_labels = 0
        return {"labels": period, **{f"{k}_total": v for k, v in counts.items()}, **self.figures(),
                "baseline": self.baseline, "decayed": self.decayed}

    def families(self, counter: Any, gauge: Any) -> Iterator[Any]:
        fam = counter("edge_feedback_labels", "Feedback labels received, by outcome (joined with a stored "
                      "prediction, unknown_id: too old or never made, duplicate, invalid).", labels=["outcome"])
        with self._lock:
            counts = dict(self.counts)
        for k, v in counts.items():
            fam.add_metric([k], v)
        yield fam
        f = self.figures()
        for key in ("accuracy", "precision", "recall"):
            g = gauge(f"edge_field_{key}_ratio", f"Field {key} over the last {self.config.window} labels "
                      "(NaN until labels arrive).")
            value = f.get(key)
            g.add_metric([], math.nan if value is None else value)
            yield g
