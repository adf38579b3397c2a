"""Anchor-based SSD detection (BlazeFace / MediaPipe style): anchor decode, sigmoid scores, plain or weighted NMS.

Regressions are offsets from anchors (cx, cy, w, h, normalised to the input): x = raw_x / scale_x * anchor_w +
anchor_cx, and alike for y and every keypoint; w = raw_w / scale_w * anchor_w. Boxes come back in frame pixels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.package.manifest import SsdDecoding
from edge_runtime.postprocess.nms import nms, weighted_nms
from edge_runtime.preprocess import Transform
from edge_runtime.results import Detection


def decode_boxes(
    raw: np.ndarray, anchors: np.ndarray, scale: Sequence[float], num_keypoints: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """[N, 4+2K] regressions -> ([N, 4] x1, y1, x2, y2 and [N, K, 2] keypoints), normalised to the input."""
    raw = np.asarray(raw, dtype=np.float32).reshape(anchors.shape[0], -1)
    sx, sy, sw, sh = (float(s) for s in scale)
    acx, acy, aw, ah = anchors[:, 0], anchors[:, 1], anchors[:, 2], anchors[:, 3]
    cx = raw[:, 0] / sx * aw + acx
    cy = raw[:, 1] / sy * ah + acy
    w = raw[:, 2] / sw * aw
    h = raw[:, 3] / sh * ah
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    kp = raw[:, 4 : 4 + 2 * num_keypoints].reshape(len(raw), num_keypoints, 2)
    kp = np.stack([kp[..., 0] / sx * aw[:, None] + acx[:, None], kp[..., 1] / sy * ah[:, None] + acy[:, None]], -1)
    return boxes, kp


def scores_and_classes(raw: np.ndarray, n: int, activation: str, clip: float | None) -> tuple[np.ndarray, np.ndarray]:
    """[N] or [N, C] raw scores -> (best score, its class) per anchor, after clipping and the activation."""
    s = np.asarray(raw, dtype=np.float32).reshape(n, -1)
    if clip is not None:
        s = np.clip(s, -clip, clip)
    if activation == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-np.clip(s, -80.0, 80.0)))  # float32 exp overflows past ~88
    return s.max(axis=1), s.argmax(axis=1)


def detect_ssd(
    raw_boxes: np.ndarray,
    raw_scores: np.ndarray,
    anchors: np.ndarray,
    dec: SsdDecoding,
    input_hw: tuple[int, int],
    transform: Transform | None,
    labels: Sequence[str] | None = None,
) -> tuple[Detection, ...]:
    """Full SSD post-processing: decode, threshold, NMS, map to frame pixels."""
    n = anchors.shape[0]
    scores, classes = scores_and_classes(raw_scores, n, dec.score_activation, dec.score_clip)
    keep = scores >= dec.score_threshold
    if not keep.any():
        return ()
    boxes, kps = decode_boxes(np.asarray(raw_boxes).reshape(n, -1)[keep], anchors[keep], dec.scale, dec.num_keypoints)
    scores, classes = scores[keep], classes[keep]
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, kps, scores, classes = boxes[valid], kps[valid], scores[valid], classes[valid]
    if dec.nms == "weighted" and classes.max(initial=0) == 0:
        boxes, scores, blended = weighted_nms(boxes, scores, dec.iou_threshold, dec.max_detections, kps)
        kps = blended if blended is not None else kps[:0]
        classes = np.zeros(len(boxes), dtype=np.int64)
    else:
        idx = nms(boxes, scores, dec.iou_threshold, dec.max_detections)
        boxes, kps, scores, classes = boxes[idx], kps[idx], scores[idx], classes[idx]
    return to_detections(boxes, scores, classes, kps, input_hw, transform, labels)


def to_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    classes: np.ndarray,
    keypoints: np.ndarray,
    input_hw: tuple[int, int],
    transform: Transform | None,
    labels: Sequence[str] | None,
) -> tuple[Detection, ...]:
    """Normalised input coordinates -> Detections in frame pixels (clipped to the frame)."""
    h, w = input_hw
    px = boxes * np.array([w, h, w, h], dtype=np.float32)
    kp = keypoints.reshape(len(boxes), -1) * np.tile(np.array([w, h], dtype=np.float32), keypoints.shape[1])
    if transform is not None:
        px = np.clip(transform.to_frame(px), 0, [transform.frame_width, transform.frame_height] * 2)
        kp = transform.to_frame(kp)
    out = []
    for i in range(len(px)):
        c = int(classes[i])
        points = tuple((float(kp[i, 2 * j]), float(kp[i, 2 * j + 1])) for j in range(kp.shape[1] // 2))
        label = labels[c] if labels is not None and c < len(labels) else None
        out.append(Detection(tuple(float(v) for v in px[i]), float(scores[i]), c, label, points))  # type: ignore[arg-type]
    return tuple(out)
