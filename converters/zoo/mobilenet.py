"""MobileNetV2-224 (the Keras architecture) with seeded random weights, saved as ``.keras``: the benchmark model.

Random weights are enough for size and speed figures and avoid any download. Batch-norm statistics are pushed
away from their identity defaults so activations have realistic ranges for int8 calibration.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters.sources.keras import import_tensorflow
from edge_runtime.fsutil import atomic_write_bytes

INPUT_SHAPE = (224, 224, 3)
CLASSES = 1000


def build_mobilenet_v2(seed: int = 0, alpha: float = 1.0) -> object:
    """A MobileNetV2-224 Keras model with deterministic random weights (ImageNet head, 1000 classes)."""
    tf = import_tensorflow()
    keras = tf.keras
    keras.utils.set_random_seed(seed)
    model = keras.applications.MobileNetV2(
        input_shape=INPUT_SHAPE, alpha=alpha, weights=None, classes=CLASSES, classifier_activation="softmax"
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32),
                    rng.normal(0.0, 0.1, beta.shape).astype(np.float32),
                    rng.normal(0.0, 0.1, mean.shape).astype(np.float32),
                    rng.uniform(0.5, 2.0, var.shape).astype(np.float32),
                ]
            )
    return model


def save_mobilenet_v2(path: Path, seed: int = 0) -> Path:
    """Build and save the model as ``.keras`` (atomically); an existing file is reused."""
    path = Path(path)
    if path.is_file():
        return path
    model = build_mobilenet_v2(seed)
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    tmp.parent.mkdir(parents=True, exist_ok=True)
    model.save(str(tmp))  # type: ignore[attr-defined]
    atomic_write_bytes(path, tmp.read_bytes())
    tmp.unlink()
    return path
