"""scikit-learn estimators (pickle and joblib) -> int8 ONNX packages, checked against the estimator itself."""

from __future__ import annotations

import pickle

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from converters.pipeline import ConvertOptions, convert
from edge_runtime.cli import main
from edge_runtime.errors import ConversionError
from edge_runtime.package import load_package
from edge_runtime.preprocess import TensorPreprocessor
from edge_runtime.quant import dequantize


@pytest.mark.parametrize("source", ["mlp.pkl", "mlp.joblib"])
def test_mlp_to_int8_onnx_matches_estimator(source, sklearn_models, data_dir, digits, tmp_path):
    """Given an MLP, when converted, then int8 probabilities track sklearn's own within the stated tolerance:
    top-1 agreement >= 0.97 and max |probability error| <= 0.15 on 300 digits outside calibration."""
    out = tmp_path / "pkg"
    rc = main([
        "convert", str(sklearn_models[source]), "--profile", "x86-laptop", "--calibration",
        str(data_dir / "features_calib.npy"), "--validation", str(data_dir / "features_valid.npy"), "--out", str(out),
    ])  # fmt: skip
    assert rc == 0
    pkg = load_package(out, allow_unsigned=True)
    m = pkg.manifest
    assert m.source.format == "sklearn" and m.inputs[0].kind == "tensor" and tuple(m.inputs[0].shape) == (1, 64)
    assert m.outputs.decoding.type == "classification" and m.outputs.decoding.output == "probabilities"
    model = onnx.load(str(pkg.model_path))
    assert any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    assert any(numpy_helper.to_array(i).dtype == np.int8 for i in model.graph.initializer)
    assert m.accuracy.samples == 100 and m.accuracy.passed

    est = pickle.loads(sklearn_models["mlp.pkl"].read_bytes())
    sess = ort.InferenceSession(str(pkg.model_path), providers=["CPUExecutionProvider"])
    x = digits.x[1500:1800]
    ref = est.predict_proba(x)
    # fed as the device feeds it: the manifest's input spec quantizes features to the graph's integer input
    assert m.inputs[0].dtype == "uint8" and m.inputs[0].quantization is not None
    pre = TensorPreprocessor(m.inputs[0])
    out_q = next(t.quantization for t in m.outputs.tensors if t.name == "probabilities")
    got = np.concatenate([dequantize(sess.run(["probabilities"], {"X": pre(row)})[0], out_q) for row in x])
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.97
    assert np.max(np.abs(ref - got)) <= 0.15
    assert m.reference.input_values is not None and len(m.reference.channel_mean) == 64


def test_random_forest_has_nothing_to_quantize_but_converts_in_float32(sklearn_models, data_dir, tmp_path, monkeypatch):
    opts = dict(source=sklearn_models["forest.pkl"], profile="x86-laptop", calibration=data_dir / "features_calib.npy")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with pytest.raises(ConversionError, match="nothing in this model can be quantized"):
        convert(ConvertOptions(**opts, out=tmp_path / "int8"), progress=lambda s: None)
    assert not (tmp_path / "int8").exists()
    # symbolic shape inference fails on the tree ensemble; onnxruntime's partial-model dump stays out of the cwd
    assert list(cwd.iterdir()) == []
    pkg = convert(ConvertOptions(**opts, out=tmp_path / "f32", precision="float32"), progress=lambda s: None)
    m = pkg.manifest
    assert m.quantization.precision == "float32" and m.accuracy.top1_agreement == 1.0 and m.accuracy.max_abs_error == 0
    est = pickle.loads(sklearn_models["forest.pkl"].read_bytes())
    sess = ort.InferenceSession(str(pkg.model_path), providers=["CPUExecutionProvider"])
    x = np.load(data_dir / "features_valid.npy")
    labels = np.concatenate([sess.run(["label"], {"X": row[None]})[0] for row in x])
    assert np.array_equal(labels, est.predict(x))  # skl2onnx trees are exact
