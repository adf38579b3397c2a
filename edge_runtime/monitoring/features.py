"""Per-sample drift features: cheap scalars of an input and of the model's answer to it.

Inputs (images, from a small thumbnail, in the model's colour order): ``brightness`` (mean pixel 0..255, the same
definition as the package's reference statistics), ``contrast`` (std of the grey thumbnail: occlusion, fog,
exposure), ``sharpness`` (mean absolute Laplacian of the thumbnail: blur lowers it) and ``noise`` (mean absolute
difference between a point-sampled and an area-averaged thumbnail: sensor noise raises it). Tensor inputs (sensor
windows): ``input_mean`` and ``input_std``. Outputs: ``confidence`` (top-1 score, or best detection score with 0
for none), ``topk_mass`` (the sum of the top-k class scores: how peaked the answer is, meaningful for a
1,000-class output where a class histogram is noise), ``class_mix`` (1 when the top-1 class is one of the
reference's most frequent classes; a new scene or class mix lowers its mean) and ``detections`` (per frame).
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.results import Prediction

THUMB_W = 64
# Smallest scale of each feature worth an alarm: below it a shift is not practically meaningful, however
# steady the reference (a fixed camera's brightness barely moves, so its spread alone would alarm on noise).
SCALE_FLOORS = {"brightness": 4.0, "contrast": 3.0, "sharpness": 1.0, "noise": 1.0, "input_mean": 1e-3,
                "input_std": 1e-3, "confidence": 0.04, "topk_mass": 0.04, "class_mix": 0.2, "detections": 0.5}
PROPORTIONS = frozenset({"class_mix"})  # scored on the window mean (a share), not the median


def image_features(frame: np.ndarray, flip: bool = False) -> dict[str, float]:
    """brightness, contrast and sharpness of a BGR/RGB/grey uint8 frame (``flip``: channel order differs from the
    model's, which matters only for colour-dependent features; brightness is a mean over channels)."""
    h, w = frame.shape[:2]
    tw = min(THUMB_W, w)
    th = max(1, round(h * tw / max(w, 1)))
    small = cv2.resize(frame, (tw, th), interpolation=cv2.INTER_AREA)
    if small.ndim == 3 and small.shape[2] >= 3:
        means = cv2.mean(small)[:3]
        gray = cv2.cvtColor(small[:, :, :3], cv2.COLOR_RGB2GRAY if flip else cv2.COLOR_BGR2GRAY)
    else:
        gray = small if small.ndim == 2 else small[:, :, 0]
        means = (float(gray.mean()),)
    _, std = cv2.meanStdDev(gray)
    lap = cv2.Laplacian(gray, cv2.CV_32F)
    # Pixel noise survives point sampling but not area averaging: their mean difference rises with sensor noise
    # (the thumbnail's Laplacian does not: averaging has already removed the noise).
    one = frame if frame.ndim == 2 else frame[:, :, 1]
    picked = cv2.resize(one, (tw, th), interpolation=cv2.INTER_NEAREST)
    averaged = cv2.resize(one, (tw, th), interpolation=cv2.INTER_AREA)
    noise = float(cv2.norm(picked, averaged, cv2.NORM_L1)) / picked.size
    return {"brightness": float(sum(means) / len(means)), "contrast": float(std[0][0]),
            "sharpness": float(np.abs(lap).mean()), "noise": noise}


def tensor_features(window: np.ndarray) -> dict[str, float]:
    x = np.asarray(window, dtype=np.float32)
    return {"input_mean": float(x.mean()), "input_std": float(x.std())}


def output_features(p: Prediction, top_classes: frozenset[int] | None) -> dict[str, float]:
    if p.task == "detection":
        return {"confidence": max((d.score for d in p.detections), default=0.0),
                "detections": float(len(p.detections))}
    if not p.classes:
        return {}
    out = {"confidence": float(p.classes[0].score), "topk_mass": float(sum(c.score for c in p.classes))}
    if top_classes:
        out["class_mix"] = 1.0 if p.classes[0].index in top_classes else 0.0
    return out
