"""Digit "frames" for the re-training tests: sklearn's 8x8 digits drawn as 32x32 gray frames, an ONNX classifier
trained on them by ``train_digits.py`` (the user's training command in these tests), and clips the agents read."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

HERE = Path(__file__).parent
CLASSES = tuple(str(i) for i in range(10))
SIDE = 32
# Convert options of the first package (recorded in it as its recipe, re-run on every candidate).
RECIPE = {"profile": "x86-laptop", "input_kind": "image", "color_order": "GRAY", "layout": "NHWC",
          "mean": [0.0], "std": [15.9375], "labels": list(CLASSES), "max_samples": 64,
          "precision": "float32"}  # int8 converts too (see tests/converters), in four times the time here


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.float32), d.target.astype(np.int64)


def frame(img8: np.ndarray, inverted: bool = False) -> np.ndarray:
    """One digit as a BGR 32x32 frame; ``inverted``: white on black becomes black on white (the shift)."""
    v = np.clip(img8 * 15.9375, 0, 255).astype(np.uint8)
    if inverted:
        v = 255 - v
    big = cv2.resize(v, (SIDE, SIDE), interpolation=cv2.INTER_NEAREST)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def write_clip(path: Path, frames: list[np.ndarray], fps: float = 20) -> Path:
    """A lossless-enough clip (MJPG at quality 100 in AVI) that the agents loop over."""
    tmp = path.with_name(path.stem + ".tmp.avi")
    w = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, (SIDE, SIDE))
    w.set(cv2.VIDEOWRITER_PROP_QUALITY, 100)
    for f in frames:
        w.write(f)
    w.release()
    tmp.replace(path)  # atomic: an agent rewinding reopens either the old clip or the new one
    return path


def write_images(folder: Path, frames: list[np.ndarray], labels: list[int] | None = None) -> Path:
    """PNG frames, in a folder per class when ``labels`` are given."""
    for i, f in enumerate(frames):
        d = folder / CLASSES[labels[i]] if labels is not None else folder
        d.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(d / f"{i:05d}.png"), f)
    return folder


def model_inputs(frames: list[np.ndarray]) -> np.ndarray:
    """The float inputs the package's preprocessing makes of frames ([N, 8, 8, 1], pixel / 15.9375)."""
    out = []
    for f in frames:
        g = cv2.cvtColor(f, cv2.COLOR_BGR2GRAY)
        out.append(cv2.resize(g, (8, 8), interpolation=cv2.INTER_AREA).astype(np.float32)[..., None] / 15.9375)
    return np.stack(out)


def match_label(frame_bgr: np.ndarray, refs: np.ndarray, labels: np.ndarray) -> int:
    """Stand-in for a person looking at a sample: the label of the nearest known frame."""
    g = cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2GRAY).astype(np.float32) if frame_bgr.ndim == 3 else frame_bgr
    d = np.abs(refs - cv2.resize(g, (SIDE, SIDE))[None]).reshape(len(refs), -1).sum(1)
    return int(labels[int(np.argmin(d))])


def build_world(tmp: Path, policy_update: dict[str, Any]) -> dict[str, Any]:
    """Model 1.0.0 trained on normal digits, its signed package (recording its recipe), base data, a fixed holdout,
    shifted frames, references for labelling, and ``tmp/retrain.yaml`` (``policy_update``: top-level sections)."""
    from converters.options import ConvertOptions
    from converters.pipeline import convert
    from edge_runtime.package import generate_keypair
    from tests.retrain.train_digits import onnx_model, train

    imgs, y = digits()
    normal = [frame(i) for i in imgs]
    x = model_inputs(normal)
    onnx_model(train(x[:600], y[:600]), tmp / "digits.onnx")
    np.savez(tmp / "base.npz", x=x[:600], y=y[:600])
    write_images(tmp / "calib", normal[:48])
    write_images(tmp / "holdout", normal[1500:1600], list(y[1500:1600]))
    priv, pub = generate_keypair(tmp / "keys" / "fleet")
    # the package records this conversion (its recipe) itself; the candidates are converted from it
    convert(ConvertOptions(**RECIPE, calibration=tmp / "calib", source=tmp / "digits.onnx", out=tmp / "pkg",
                           name="digits", version="1.0.0", sign_key=priv, force=True), progress=lambda _s: None)
    shifted_ids = range(600, 900)
    shifted = [frame(imgs[i], inverted=True) for i in shifted_ids]
    refs = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32) for f in normal[:1500] + shifted])
    ref_labels = np.concatenate([y[:1500], y[list(shifted_ids)]])
    (tmp / "mode.txt").write_text("slow")
    policy = {
        "model": "digits", "target": "group:lobby",
        "training": {"command": f"{sys.executable} {HERE / 'train_digits.py'} {{data}} {{model}} {{output}} "
                                f"--mode-file {tmp / 'mode.txt'}",
                     "timeout_s": 300, "source_model": "digits.onnx", "base_data": "base.npz"},
        "gates": {"holdout": "holdout", "tolerance": 0.05, "field_share": 0.25},
        **policy_update,
    }
    (tmp / "retrain.yaml").write_text(yaml.safe_dump(policy))
    return {"priv": priv, "pub": pub, "normal": normal, "shifted": shifted, "refs": refs, "ref_labels": ref_labels,
            "y": y}
