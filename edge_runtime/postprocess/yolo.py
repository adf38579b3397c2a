"""YOLO-style detection: decode v5 ([1, N, 5+C]: objectness * class scores) or v8 ([1, 4+C, N]) predictions,
threshold, class-aware NMS, boxes (cx, cy, w, h in input pixels) mapped back to frame pixels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.package.manifest import YoloDecoding
from edge_runtime.postprocess.nms import class_aware_nms
from edge_runtime.preprocess import Transform
from edge_runtime.results import Detection


def decode_yolo(
    pred: np.ndarray, variant: str, score_threshold: float, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw predictions -> (boxes [K,4] x1,y1,x2,y2 input pixels, scores [K], classes [K]) above the threshold.

    v8 exports are [4+C, N] but some are transposed ([N, 4+C]); the class count (from the labels) settles
    which, else the longer axis is taken as N.
    """
    p = np.asarray(pred, dtype=np.float32)
    p = p.reshape(p.shape[-2], p.shape[-1])
    if variant == "v8":
        width = None if num_classes is None else 4 + num_classes
        transposed = p.shape[1] == width and p.shape[0] != width if width else p.shape[0] > p.shape[1]
        rows = p if transposed else p.T  # [N, 4+C]
        cls = rows[:, 4:]
    else:
        rows = p  # [N, 5+C]
        cls = rows[:, 5:] * rows[:, 4:5]
    if cls.shape[1] == 0:
        raise ValueError("YOLO output has no class scores")
    classes = cls.argmax(axis=1)
    scores = cls[np.arange(len(cls)), classes]
    keep = scores >= score_threshold
    xywh = rows[keep, :4]
    boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)
    return boxes, scores[keep], classes[keep]


def detect_yolo(
    pred: np.ndarray, dec: YoloDecoding, transform: Transform | None, labels: Sequence[str] | None = None
) -> tuple[Detection, ...]:
    """Full YOLO post-processing: decode, threshold, class-aware NMS, map to frame pixels."""
    boxes, scores, classes = decode_yolo(pred, dec.variant, dec.score_threshold, len(labels) if labels else None)
    idx = class_aware_nms(boxes, scores, classes, dec.iou_threshold, dec.max_detections)
    boxes, scores, classes = boxes[idx], scores[idx], classes[idx]
    if transform is not None:
        boxes = np.clip(transform.to_frame(boxes), 0, [transform.frame_width, transform.frame_height] * 2)
    out = []
    for b, s, c in zip(boxes, scores, classes, strict=True):
        label = labels[int(c)] if labels is not None and int(c) < len(labels) else None
        out.append(Detection((float(b[0]), float(b[1]), float(b[2]), float(b[3])), float(s), int(c), label))
    return tuple(out)
