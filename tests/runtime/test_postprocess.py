"""Post-processing: top-k, IoU/NMS properties, YOLO decode end to end, SSD anchor decode, weighted NMS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from edge_runtime.api import load
from edge_runtime.package.manifest import SsdDecoding
from edge_runtime.postprocess.classify import activate, top_k
from edge_runtime.postprocess.nms import class_aware_nms, iou_matrix, nms, weighted_nms
from edge_runtime.postprocess.ssd import decode_boxes, detect_ssd
from edge_runtime.postprocess.yolo import decode_yolo
from edge_runtime.preprocess import Transform
from tests.model_factory import factory_trust, yolo_package, yolo_predictions

coords = st.floats(0, 100, allow_nan=False, width=32)


@st.composite
def box_sets(draw: st.DrawFn, max_n: int = 12) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, max_n))
    xy = draw(arrays(np.float32, (n, 2), elements=coords))
    wh = draw(arrays(np.float32, (n, 2), elements=st.floats(1, 50, width=32)))
    scores = draw(arrays(np.float32, (n,), elements=st.floats(0, 1, width=32), unique=True))
    return np.concatenate([xy, xy + wh], axis=1), scores


@settings(max_examples=60, deadline=None)
@given(box_sets())
def test_iou_is_symmetric_bounded_and_one_on_the_diagonal(data: tuple[np.ndarray, np.ndarray]) -> None:
    boxes, _ = data
    m = iou_matrix(boxes, boxes)
    assert np.all((m >= 0) & (m <= 1 + 1e-6))
    np.testing.assert_allclose(m, m.T, atol=1e-6)
    np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(box_sets(), st.floats(0.1, 0.9))
def test_nms_keeps_the_best_and_no_two_kept_boxes_overlap_too_much(
    data: tuple[np.ndarray, np.ndarray], thr: float
) -> None:
    boxes, scores = data
    keep = nms(boxes, scores, thr)
    if len(boxes) == 0:
        assert keep.size == 0
        return
    assert keep[0] == int(np.argmax(scores))
    assert np.all(np.diff(scores[keep]) <= 0)  # best first
    kept = boxes[keep]
    m = iou_matrix(kept, kept) - np.eye(len(kept))
    assert np.all(m <= thr + 1e-6)
    # every dropped box overlaps some kept, better box by more than the threshold
    dropped = np.setdiff1d(np.arange(len(boxes)), keep)
    for d in dropped:
        over = iou_matrix(boxes[d : d + 1], kept)[0]
        assert np.any((over > thr - 1e-6) & (scores[keep] >= scores[d]))


@settings(max_examples=40, deadline=None)
@given(box_sets(), st.floats(0.1, 0.9))
def test_class_aware_nms_equals_nms_per_class(data: tuple[np.ndarray, np.ndarray], thr: float) -> None:
    boxes, scores = data
    classes = np.arange(len(boxes)) % 3
    keep = set(class_aware_nms(boxes, scores, classes, thr).tolist())
    want = set()
    for c in range(3):
        idx = np.flatnonzero(classes == c)
        want |= set(idx[nms(boxes[idx], scores[idx], thr)].tolist())
    assert keep == want


def test_weighted_nms_blends_a_cluster_by_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.3, 0.8], np.float32)
    points = np.array([[[2, 2]], [[6, 6]], [[55, 55]]], np.float32)
    out, s, p = weighted_nms(boxes, scores, 0.3, points=points)
    np.testing.assert_allclose(out[0], [0.25, 0.25, 10.25, 10.25], atol=1e-5)
    np.testing.assert_allclose(s, [0.9, 0.8])
    assert p is not None
    np.testing.assert_allclose(p[0], [[3, 3]], atol=1e-5)
    np.testing.assert_allclose(out[1], boxes[2])


def test_top_k_and_activations() -> None:
    logits = np.array([[1.0, 3.0, 2.0, 3.0]], np.float32)
    probs = activate(logits, "softmax")
    assert probs.sum() == pytest.approx(1.0)
    top = top_k(probs, 3, ["w", "x", "y", "z"])
    assert [c.index for c in top] == [1, 3, 2]  # ties keep index order
    assert top[0].label == "x" and top[0].score == pytest.approx(probs[0, 1])
    assert activate(np.array([0.0]), "sigmoid")[0] == pytest.approx(0.5)
    assert [c.index for c in top_k(np.array([0.2, 0.5]), 5)] == [1, 0]


@pytest.mark.parametrize("variant", ["v8", "v5"])
def test_yolo_package_end_to_end_with_letterbox(tmp_path: Path, variant: str) -> None:
    """Given fixed predictions for a 64x64 input and a 128x64 frame (letterboxed: scale 0.5, 16 px bands)."""
    with load(yolo_package(tmp_path / variant, variant=variant), trust=factory_trust()) as model:  # type: ignore[arg-type]
        pred = model.predict(np.zeros((64, 128, 3), np.uint8))
    got = sorted((d.label, round(d.score, 3), tuple(round(v, 3) for v in d.box)) for d in pred.detections)
    # input box (cx, cy, w, h) -> frame: x = (x_in - 0) / 0.5, y = (y_in - 16) / 0.5, clipped to the frame
    assert got == [
        ("car", 0.5, (72.0, 60.0, 88.0, 64.0)),
        ("car", 0.7, (24.0, 0.0, 56.0, 24.0)),
        ("person", 0.6, (90.0, 58.0, 110.0, 64.0)),
        ("person", 0.9, (24.0, 0.0, 56.0, 24.0)),
    ]
    assert pred.to_dict()["detections"][0]["label"] in ("person", "car")


def test_yolo_decode_accepts_transposed_v8_output() -> None:
    p = yolo_predictions("v8")
    p = np.concatenate([p, p[:, :, :1]], axis=2)  # [1, 4+C=6, N=7]; a square output would be ambiguous
    a = decode_yolo(p, "v8", 0.25, num_classes=2)
    b = decode_yolo(np.transpose(p, (0, 2, 1)), "v8", 0.25, num_classes=2)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y)
    assert len(a[1]) == 6  # one of the 7 candidates is below the threshold


def test_ssd_decode_puts_boxes_and_keypoints_at_their_anchors() -> None:
    anchors = np.array([[0.25, 0.25, 1, 1], [0.75, 0.5, 0.5, 0.5]], np.float32)
    raw = np.array([[0, 0, 32, 64, 0, 0], [12.8, -12.8, 64, 64, 128, 0]], np.float32)
    boxes, kp = decode_boxes(raw, anchors, (128, 128, 128, 128), num_keypoints=1)
    np.testing.assert_allclose(boxes[0], [0.125, 0.0, 0.375, 0.5], atol=1e-6)
    np.testing.assert_allclose(boxes[1], [0.675, 0.325, 0.925, 0.575], atol=1e-6)
    np.testing.assert_allclose(kp[:, 0], [[0.25, 0.25], [1.25, 0.5]], atol=1e-6)


def test_ssd_detection_thresholds_and_maps_to_frame() -> None:
    anchors = np.array([[0.5, 0.5, 1, 1]] * 3, np.float32)
    raw_boxes = np.array([[0, 0, 64, 64], [1, 1, 64, 64], [0, 0, 64, 64]], np.float32)
    raw_scores = np.array([3.0, 2.0, -5.0], np.float32)  # sigmoid: 0.95, 0.88, 0.007
    dec = SsdDecoding(anchors_file="a.npy", boxes_output="b", scores_output="s", scale=(128, 128, 128, 128))
    t = Transform(scale_x=0.5, scale_y=0.5, offset_x=0.0, offset_y=0.0, frame_width=256, frame_height=256)
    dets = detect_ssd(raw_boxes, raw_scores, anchors, dec, (128, 128), t, ["face"])
    assert len(dets) == 1  # the second overlaps the first, the third is below threshold
    assert dets[0].label == "face" and dets[0].score == pytest.approx(1 / (1 + np.exp(-3.0)), rel=1e-5)
    np.testing.assert_allclose(dets[0].box, [64, 64, 192, 192], atol=1e-3)
