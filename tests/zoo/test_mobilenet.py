"""MobileNetV2-224 benchmark model: the real Keras architecture, deterministic random weights, saved as .keras."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.sources.keras import load_keras
from converters.zoo.mobilenet import build_mobilenet_v2, save_mobilenet_v2

pytestmark = pytest.mark.slow


def test_mobilenet_is_saved_loadable_and_seeded(tmp_path: Path):
    # given the model saved once
    path = save_mobilenet_v2(tmp_path / "mobilenet_v2.keras", seed=3)
    mtime = path.stat().st_mtime_ns
    assert save_mobilenet_v2(path, seed=3) == path and path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    # when it is loaded as a converter source
    fm = load_keras(path, tmp_path / "work")
    # then it is MobileNetV2-224: 1000 classes, ~3.5 M parameters, 52 convolutions
    assert fm.inputs[0].shape == (-1, 224, 224, 3) and fm.outputs[0].shape == (-1, 1000)
    model = fm.keras_model
    assert 3_400_000 < model.count_params() < 3_600_000
    convs = [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "DepthwiseConv2D")]
    assert len(convs) == 52
    # and the same seed gives the same weights, another seed other weights
    again, other = build_mobilenet_v2(seed=3), build_mobilenet_v2(seed=4)
    w = [np.asarray(v) for v in model.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(w, again.get_weights(), strict=True))
    assert not np.array_equal(w[0], other.get_weights()[0])
    probs = model(np.zeros((1, 224, 224, 3), np.float32)).numpy()
    assert probs.shape == (1, 1000) and abs(float(probs.sum()) - 1.0) < 1e-3
