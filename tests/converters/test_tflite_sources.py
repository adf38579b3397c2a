"""Float TFLite source (BlazeFace: no signature defs, float16 weights behind DEQUANTIZE) -> int8 TFLite and ONNX.

Tolerances: the unfolded float32 model equals the original to 1e-5; int8 vs float face score on the astronaut
photo within 0.05; ONNX vs TFLite float: face scores max abs error < 1e-4, raw outputs (logits, box regressions
in input pixels) max abs error < 1e-5 of their largest magnitude.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converters.model import FloatModel
from converters.sources import tflite_graph
from converters.sources.tflite import load_tflite, tflite_to_onnx
from converters.targets.tflite_int8 import float_ops, operator_types, quantize_tflite
from converters.zoo import blazeface
from edge_runtime.errors import ConversionError
from edge_runtime.package.manifest import Quantization
from edge_runtime.preprocess import ImagePreprocessor
from edge_runtime.profiles import load_profile
from edge_runtime.quant import dequantize, quantize

pytestmark = pytest.mark.slow


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x.astype(np.float64), -100, 100)))


def _run(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a TFLite model with LiteRT on one float input; int8 I/O is quantized and dequantized here."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    d = interp.get_input_details()[0]
    scale, zp = d["quantization"]
    if np.dtype(d["dtype"]).kind == "i":
        x = quantize(x, Quantization(scale=(scale,), zero_point=(zp,)), d["dtype"])
    interp.set_tensor(d["index"], x)
    interp.invoke()
    out = {}
    for o in interp.get_output_details():
        s, z = o["quantization"]
        q = Quantization(scale=(s,), zero_point=(z,)) if s else None
        out[o["name"]] = dequantize(interp.get_tensor(o["index"]), q)
    return out


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> FloatModel:
    return load_tflite(blazeface.model_path(), tmp_path_factory.mktemp("blazeface"))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    pre = ImagePreprocessor(blazeface.input_spec(), "RGB")
    return pre(dict(blazeface.demo_photos(("astronaut",)))["astronaut"])[0]


def _calibration():
    pre = ImagePreprocessor(blazeface.input_spec(), "RGB")
    for _, frame in blazeface.calibration_frames():
        yield [pre(frame)[0]]


def test_unfolding_removes_float16_and_keeps_the_outputs(float_model: FloatModel, astronaut: np.ndarray):
    # given BlazeFace as shipped: float16 weights behind DEQUANTIZE ops, no signature def
    original = tflite_graph.parse(blazeface.model_path().read_bytes())
    assert "DEQUANTIZE" in operator_types(blazeface.model_path().read_bytes())
    assert not original.signatureDefs
    # then the loaded model has float32 constants only, no orphans, and a signature def
    assert float_model.tflite_path is not None
    buf = float_model.tflite_path.read_bytes()
    model = tflite_graph.parse(buf)
    sg = model.subgraphs[0]
    assert "DEQUANTIZE" not in operator_types(buf)
    assert {tflite_graph.type_name(t.type) for t in sg.tensors} == {"FLOAT32", "INT32"}
    used_buffers = {t.buffer for t in sg.tensors}
    assert set(range(1, len(model.buffers))) <= used_buffers  # no orphaned buffers
    used_opcodes = {op.opcodeIndex for op in sg.operators}
    assert used_opcodes == set(range(len(model.operatorCodes)))
    assert model.signatureDefs[0].signatureKey.decode() == "serving_default"
    assert [i.name for i in float_model.inputs] == ["input"]
    assert [(o.name, o.shape) for o in float_model.outputs] == [
        ("regressors", (1, 896, 16)),
        ("classificators", (1, 896, 1)),
    ]
    # and it computes what the original computes
    before, after = _run(blazeface.model_path(), astronaut), _run(float_model.tflite_path, astronaut)
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-5)


def test_float_blazeface_quantizes_to_full_int8(float_model: FloatModel, astronaut: np.ndarray, tmp_path: Path):
    # when the float TFLite (no Keras graph) is quantized for a Raspberry Pi
    qm = quantize_tflite(float_model, _calibration, load_profile("raspberry-pi-4"), tmp_path / "int8.tflite")
    # then the structure is full-integer
    buf = qm.path.read_bytes()
    types = operator_types(buf)
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD"} <= set(types)
    assert all(t <= {"INT8", "INT32"} for t in types.values()), types
    assert float_ops(buf) == ()
    assert [t.dtype for t in qm.inputs + qm.outputs] == ["int8"] * 3
    assert [t.name for t in qm.outputs] == ["regressors", "classificators"]
    # input quantization maps [-1, 1] onto int8: scale ~ 2/255
    assert qm.input_quantization[0] is not None and qm.input_quantization[0].scale[0] == pytest.approx(2 / 255, 0.01)
    # and the face score on the astronaut stays within 0.05 of the float model's
    float_score = float(_sigmoid(_run(float_model.tflite_path, astronaut)["classificators"]).max())
    int8_score = float(_sigmoid(_run(qm.path, astronaut)["classificators"]).max())
    assert float_score > 0.85
    assert abs(int8_score - float_score) < 0.05, (float_score, int8_score)


def test_tflite_to_onnx_matches_tflite(float_model: FloatModel, astronaut: np.ndarray):
    import onnxruntime as ort

    path = tflite_to_onnx(float_model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": astronaut}), strict=True))
    ref = _run(float_model.tflite_path, astronaut)  # type: ignore[arg-type]
    # face scores (sigmoid of the logits) within 1e-4; raw logits and box regressions (tens of pixels) within
    # 1e-5 of their largest magnitude (float32 summation order differs between the two runtimes)
    assert np.max(np.abs(_sigmoid(got["classificators"]) - _sigmoid(ref["classificators"]))) < 1e-4
    for name in ("classificators", "regressors"):
        assert np.max(np.abs(got[name] - ref[name])) < 1e-5 * np.max(np.abs(ref[name])), name


def test_not_a_tflite_file_is_a_conversion_error(tmp_path: Path):
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ConversionError, match="not a TFLite flatbuffer"):
        load_tflite(bad, tmp_path / "work")
    truncated = tmp_path / "cut.tflite"
    truncated.write_bytes(blazeface.model_path().read_bytes()[:5000])
    with pytest.raises(ConversionError, match="cut.tflite"):
        load_tflite(truncated, tmp_path / "work")
    with pytest.raises(ConversionError, match="not found"):
        load_tflite(tmp_path / "missing.tflite", tmp_path / "work")


def test_an_already_quantized_model_is_refused(float_model: FloatModel, tmp_path: Path):
    qm = quantize_tflite(float_model, _calibration, load_profile("x86-laptop"), tmp_path / "int8.tflite")
    with pytest.raises(ConversionError, match="not a float TFLite model"):
        load_tflite(qm.path, tmp_path / "work")


def test_a_float_tflite_with_signature_is_kept_as_is_and_quantizes(tmp_path: Path):
    import tensorflow as tf

    # given a float TFLite written by TFLiteConverter (signature def present, float32 weights)
    tf.keras.utils.set_random_seed(1)
    inp = tf.keras.Input((12, 12, 3), name="pixels")
    h = tf.keras.layers.Conv2D(4, 3, activation="relu")(inp)
    out = tf.keras.layers.Dense(2)(tf.keras.layers.GlobalAveragePooling2D()(h))
    src = tmp_path / "small.tflite"
    src.write_bytes(tf.lite.TFLiteConverter.from_keras_model(tf.keras.Model(inp, out)).convert())
    # when it is loaded, the file is used unchanged
    fm = load_tflite(src, tmp_path / "work")
    assert fm.tflite_path is not None and fm.tflite_path.read_bytes() == src.read_bytes()
    assert fm.inputs[0].shape == (-1, 12, 12, 3)
    # and it quantizes with calibration at batch 1
    rng = np.random.default_rng(0)
    samples = [rng.uniform(-1, 1, (1, 12, 12, 3)).astype(np.float32) for _ in range(30)]
    qm = quantize_tflite(fm, lambda: ([s] for s in samples), load_profile("x86-laptop"), tmp_path / "q.tflite")
    assert all(t <= {"INT8", "INT32"} for t in operator_types(qm.path.read_bytes()).values())
    ref = _run(src, samples[0])
    got = _run(qm.path, samples[0])
    (name,) = ref
    err = np.abs(list(got.values())[0] - ref[name]).max()
    assert err < 0.05 * max(1e-3, float(np.abs(ref[name]).max())) + 2 * qm.output_quantization[0].scale[0]


def test_sensitivity_ranking_and_keeping_ops_in_float(float_model: FloatModel, astronaut: np.ndarray, tmp_path: Path):
    from converters.targets.tflite_int8 import float_flatbuffer
    from converters.targets.tflite_sensitivity import rank_tensors, tensor_errors

    profile = load_profile("x86-laptop")
    qm = quantize_tflite(float_model, _calibration, profile, tmp_path / "int8.tflite")
    # given the per-op error ranking of the int8 model against the float one
    ranked = rank_tensors(float_flatbuffer(float_model), qm.path, _calibration, samples=4)
    errors = tensor_errors(float_flatbuffer(float_model), qm.path, _calibration, samples=4)
    assert ranked and all(name in errors for name in ranked)
    assert errors["input"] < 0.01  # the input quantization step (2/255) is tiny against its spread
    # when the two top-ranked inner ops are kept in float
    keep = [n for n in ranked if n not in ("regressors", "classificators")][:2]
    mixed = quantize_tflite(float_model, _calibration, profile, tmp_path / "mixed.tflite", keep=keep)
    # then exactly those ops compute in float, the I/O stays int8 and the model still finds the face
    assert sorted(n.split(":", 1)[1] for n in mixed.float_nodes) == sorted(keep)
    assert mixed.method == "tflite-mlir-int8-mixed"
    assert [t.dtype for t in mixed.inputs + mixed.outputs] == ["int8"] * 3
    float_score = float(_sigmoid(_run(float_model.tflite_path, astronaut)["classificators"]).max())  # type: ignore[arg-type]
    assert abs(float(_sigmoid(_run(mixed.path, astronaut)["classificators"]).max()) - float_score) < 0.05
