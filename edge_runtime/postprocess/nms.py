"""Intersection over union and non-maximum suppression in numpy. Boxes are [N, 4] x1, y1, x2, y2."""

from __future__ import annotations

import numpy as np


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Area of each box; inverted boxes count as empty."""
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] IoU of every box in ``a`` with every box in ``b`` (0 where both are empty)."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_out: int | None = None) -> np.ndarray:
    """Indices of the boxes kept, best score first: a box is dropped if it overlaps a kept one by > threshold."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    keep: list[int] = []
    limit = len(order) if max_out is None else max_out
    while order.size and len(keep) < limit:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if rest.size:
            overlap = iou_matrix(boxes[best : best + 1], boxes[rest])[0]
            rest = rest[overlap <= iou_threshold]
        order = rest
    return np.asarray(keep, dtype=np.int64)


def class_aware_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float, max_out: int | None = None
) -> np.ndarray:
    """NMS within each class only: boxes are shifted apart per class so different classes never overlap."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if boxes.size == 0:
        return np.zeros(0, dtype=np.int64)
    span = float(boxes.max() - min(boxes.min(), 0.0)) + 1.0
    shifted = boxes + (np.asarray(classes, dtype=np.float32) * span)[:, None]
    return nms(shifted, scores, iou_threshold, max_out)


def weighted_nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    max_out: int | None = None,
    points: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MediaPipe-style blending: each cluster of overlapping boxes becomes their score-weighted mean.

    Returns (boxes [K,4], scores [K] (the best score of each cluster), points [K,...] blended alike, or None).
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    out_boxes, out_scores, out_points = [], [], []
    limit = len(order) if max_out is None else max_out
    while order.size and len(out_boxes) < limit:
        overlap = iou_matrix(boxes[order[:1]], boxes[order])[0]
        cluster = order[overlap > iou_threshold]
        if cluster.size == 0:  # an empty box overlaps nothing, not even itself
            cluster = order[:1]
        w = scores[cluster] / max(float(scores[cluster].sum()), 1e-12)
        out_boxes.append((boxes[cluster] * w[:, None]).sum(axis=0))
        out_scores.append(scores[order[0]])
        if points is not None:
            out_points.append(np.tensordot(w, points[cluster], axes=1))
        order = order[~np.isin(order, cluster)]
    blended = np.asarray(out_points, dtype=np.float32) if points is not None else None
    return np.asarray(out_boxes, dtype=np.float32).reshape(-1, 4), np.asarray(out_scores, dtype=np.float32), blended
