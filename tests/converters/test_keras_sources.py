"""Keras (.keras, .h5) and SavedModel sources -> int8 TFLite and float ONNX, on a CNN trained here on digits.

Tolerances: int8 vs float top-1 agreement >= 0.95 on the 360 held-back digits; ONNX vs Keras max abs error
< 1e-4 on softmax outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converters.model import FloatModel
from converters.sources.keras import keras_to_onnx, load_keras
from converters.targets.tflite_int8 import float_ops, operator_types, quantize_tflite
from edge_runtime.errors import CalibrationError, ConversionError
from edge_runtime.profiles import DeviceProfile, load_profile
from edge_runtime.quant import dequantize, quantize

pytestmark = pytest.mark.slow
INT_TYPES = {"INT8", "INT32"}


@dataclass
class KerasDigits:
    model: Any
    x_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    files: dict[str, Path]


@pytest.fixture(scope="module")
def kd(tmp_path_factory: pytest.TempPathFactory) -> KerasDigits:
    """A small CNN trained on scikit-learn's 8x8 digits, saved as .keras, .h5 and a SavedModel."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    keras = tf.keras
    keras.utils.set_random_seed(0)
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target
    x_train, x_test, y_train, y_test = x[:1437], x[1437:], y[:1437], y[1437:]
    inp = keras.Input((8, 8, 1), name="digit")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = keras.layers.Conv2D(16, 3, activation="relu")(h)
    h = keras.layers.Flatten()(h)
    out = keras.layers.Dense(10, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=12, batch_size=32, verbose=0)
    root = tmp_path_factory.mktemp("digits")
    files = {"keras": root / "digits.keras", "h5": root / "digits.h5", "savedmodel": root / "digits_saved"}
    model.save(files["keras"])
    model.save(files["h5"])
    model.export(str(files["savedmodel"]), verbose=False)
    return KerasDigits(model, x_train, x_test, y_test, files)


def _calibration(x: np.ndarray, count: int = 200):
    def gen():
        for i in range(count):
            yield [x[i : i + 1]]

    return gen


def _run_int8(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    from converters.targets.tflite_int8 import _quantization

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    qi, qo = _quantization(i), _quantization(o)
    out = []
    for sample in x:
        interp.set_tensor(i["index"], quantize(sample[None], qi, i["dtype"]) if qi else sample[None])
        interp.invoke()
        out.append(dequantize(interp.get_tensor(o["index"]), qo)[0])
    return np.stack(out)


@pytest.fixture(scope="module")
def profile() -> DeviceProfile:
    return load_profile("raspberry-pi-4")


@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel"])
def test_keras_sources_quantize_to_full_int8_tflite(kd: KerasDigits, profile: DeviceProfile, kind: str, tmp_path: Path):
    # given a trained CNN saved in one of the Keras/TF formats
    fm = load_keras(kd.files[kind], tmp_path / "work")
    assert fm.source_format == ("savedmodel" if kind == "savedmodel" else "keras")
    assert fm.inputs[0].shape == (-1, 8, 8, 1) and fm.outputs[0].shape == (-1, 10)
    # when it is quantized for a Raspberry Pi
    qm = quantize_tflite(fm, _calibration(kd.x_train), profile, tmp_path / "model.tflite")
    # then every operator computes in int8 and the I/O is int8 with the recorded quantization
    buf = qm.path.read_bytes()
    types = operator_types(buf)
    assert {"CONV_2D", "FULLY_CONNECTED", "SOFTMAX"} <= set(types)
    assert all(t <= INT_TYPES for t in types.values()), types
    assert float_ops(buf) == () and qm.float_nodes == ()
    assert [t.dtype for t in qm.inputs + qm.outputs] == ["int8", "int8"]
    assert qm.inputs[0].name == "digit" and qm.inputs[0].shape == (1, 8, 8, 1)
    assert qm.input_quantization[0] is not None and qm.output_quantization[0] is not None
    assert qm.input_quantization[0].scale[0] == pytest.approx(1 / 255, rel=0.02)  # calibration range [0, 1]
    # and int8 agrees with float on held-back digits
    ref = kd.model.predict(kd.x_test, verbose=0)
    got = _run_int8(qm.path, kd.x_test)
    agreement = float(np.mean(ref.argmax(1) == got.argmax(1)))
    assert np.mean(ref.argmax(1) == kd.y_test) > 0.85  # the float model really learned
    assert agreement >= 0.95, agreement


def test_uint8_io_and_per_tensor_weights_follow_the_profile(kd: KerasDigits, profile: DeviceProfile, tmp_path: Path):
    changes = {"input_dtype": "uint8", "output_dtype": "float32", "per_channel": False}
    q = profile.quantization.model_copy(update=changes)
    custom = profile.model_copy(update={"quantization": q})
    fm = load_keras(kd.files["keras"], tmp_path / "work")
    qm = quantize_tflite(fm, _calibration(kd.x_train, 50), custom, tmp_path / "model.tflite")
    assert qm.inputs[0].dtype == "uint8" and qm.outputs[0].dtype == "float32"
    assert qm.output_quantization == (None,) and qm.per_channel is False
    from converters.sources import tflite_graph

    model = tflite_graph.parse(qm.path.read_bytes())
    sg = model.subgraphs[0]
    conv_weights = [
        sg.tensors[op.inputs[1]] for op in sg.operators if tflite_graph.op_name(model, op.opcodeIndex) == "CONV_2D"
    ]
    assert conv_weights and all(len(t.quantization.scale) == 1 for t in conv_weights)
    got = _run_int8(qm.path, kd.x_test[:100])
    ref = kd.model.predict(kd.x_test[:100], verbose=0)
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.95


@pytest.mark.parametrize("kind", ["keras", "savedmodel"])
def test_keras_to_onnx_matches_tensorflow(kd: KerasDigits, kind: str, tmp_path: Path):
    import onnxruntime as ort

    fm = load_keras(kd.files[kind], tmp_path / "work")
    path = keras_to_onnx(fm)
    assert keras_to_onnx(fm) == path == fm.onnx_path  # cached
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "digit" and session.get_inputs()[0].shape == [1, 8, 8, 1]
    x = kd.x_test[:50]
    got = np.concatenate([session.run(None, {"digit": x[i : i + 1]})[0] for i in range(len(x))])
    ref = kd.model.predict(x, verbose=0)
    assert np.max(np.abs(got - ref)) < 1e-4


def test_corrupt_keras_file_is_a_conversion_error(tmp_path: Path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip archive")
    with pytest.raises(ConversionError, match="cannot load Keras model broken.keras"):
        load_keras(bad, tmp_path / "work")
    with pytest.raises(ConversionError, match="not a .keras/.h5 file or a SavedModel"):
        load_keras(tmp_path, tmp_path / "work")


def _fm(kd: KerasDigits, tmp_path: Path) -> FloatModel:
    return load_keras(kd.files["keras"], tmp_path / "work")


def test_calibration_of_the_wrong_shape_is_reported(kd: KerasDigits, profile: DeviceProfile, tmp_path: Path):
    def wrong():
        yield [np.zeros((1, 16, 16, 1), np.float32)]

    with pytest.raises(CalibrationError, match=r"shape \[1, 16, 16, 1\], the model takes \[1, 8, 8, 1\]"):
        quantize_tflite(_fm(kd, tmp_path), wrong, profile, tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_empty_calibration_and_unsupported_method_are_reported(kd: KerasDigits, profile: DeviceProfile, tmp_path: Path):
    fm = _fm(kd, tmp_path)
    with pytest.raises(CalibrationError, match="empty"):
        quantize_tflite(fm, lambda: iter(()), profile, tmp_path / "m.tflite")
    with pytest.raises(ConversionError, match="minmax only"):
        quantize_tflite(fm, _calibration(kd.x_train, 5), profile, tmp_path / "m.tflite", method="entropy")
    assert not (tmp_path / "m.tflite").exists()
