"""Keras source through the whole pipeline to both targets: int8 ONNX (via tf2onnx) and full-int8 TFLite.

Tolerance stated: int8 vs Keras top-1 agreement >= 0.95 on 200 digits outside calibration.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from converters.evaluate import ModelRunner
from converters.pipeline import ConvertOptions, convert
from edge_runtime.package.manifest import InputSpec
from edge_runtime.preprocess import ImagePreprocessor
from edge_runtime.quant import dequantize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def keras_digits(tmp_path_factory, digits):
    """A small Keras CNN trained here on 8x8 grey digits (NHWC), saved as .keras."""
    import tensorflow as tf

    keras = tf.keras
    keras.utils.set_random_seed(0)
    x = (digits.x.reshape(-1, 8, 8, 1)).astype(np.float32)
    inp = keras.Input((8, 8, 1), batch_size=1, name="pixels")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x[:1200], digits.y[:1200], epochs=8, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("keras") / "digits.keras"
    model.save(path)
    frames = (digits.x.reshape(-1, 8, 8) * 255).round().astype(np.uint8)  # raw 8-bit frames, exact 8x8
    root = path.parent
    np.save(root / "calib.npy", frames[1200:1300])
    np.save(root / "valid.npy", frames[1400:1450])
    return model, path, frames


def _agreement(keras_model, pkg, frames):
    spec = InputSpec.model_validate(pkg.manifest.inputs[0].model_dump())
    pre = ImagePreprocessor(spec, frame_order="GRAY")
    runner = ModelRunner(pkg.model_path)
    q = pkg.manifest.outputs.tensors[0].quantization
    agree = 0
    for frame in frames:
        x, _ = pre(frame)
        got = dequantize(runner.run([x])[0], q)
        ref = keras_model(frame[None, :, :, None].astype(np.float32) / 255.0, training=False).numpy()
        agree += int(ref.argmax() == got.argmax())
    return agree / len(frames)


@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_keras_to_int8_package(fmt, keras_digits, tmp_path):
    model, path, frames = keras_digits
    opts = ConvertOptions(
        source=path, profile="x86-laptop", format=fmt, calibration=path.parent / "calib.npy",
        validation=path.parent / "valid.npy", out=tmp_path / "pkg", input_kind="image", color_order="GRAY",
    )  # fmt: skip
    pkg = convert(opts, progress=lambda s: None)
    m = pkg.manifest
    assert m.format == fmt and m.source.format == "keras" and m.quantization.precision == "int8"
    assert m.accuracy.passed and m.outputs.task == "classification"
    if fmt == "onnx":
        ops = {n.op_type for n in onnx.load(str(pkg.model_path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        assert m.inputs[0].dtype == "uint8" and m.inputs[0].quantization is not None  # integer I/O (x86-laptop)
    else:
        assert m.inputs[0].dtype == "int8" and m.inputs[0].quantization is not None  # full-integer I/O
        assert m.outputs.tensors[0].dtype == "int8" and m.outputs.tensors[0].quantization is not None
        with np.load(pkg.root / m.golden.file) as g:
            assert g["input_0_0"].dtype == np.int8 and g["output_0_0"].dtype == np.int8
        assert m.golden.atol == pytest.approx(1.5 * m.outputs.tensors[0].quantization.scale[0])
    assert _agreement(model, pkg, frames[1500:1700]) >= 0.95
