"""ONNX CNN -> int8 ONNX package: structure (QDQ, int8 weights) and numbers (int8 vs float) both checked."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from edge_runtime.cli import main
from edge_runtime.package import TrustStore, load_package
from edge_runtime.package.manifest import InputSpec
from edge_runtime.preprocess import ImagePreprocessor
from edge_runtime.quant import dequantize


@pytest.fixture(scope="module")
def cnn_package(tmp_path_factory, onnx_cnn, data_dir, session_keys):
    """Given a float CNN and PNG folders, when converted for x86-laptop with a key, then a signed package."""
    out = tmp_path_factory.mktemp("cnnpkg") / "pkg"
    rc = main([
        "convert", str(onnx_cnn), "--profile", "x86-laptop", "--calibration", str(data_dir / "calib"),
        "--validation", str(data_dir / "valid"), "--out", str(out), "--sign-key", str(session_keys[0]),
        "--name", "digits-cnn", "--version", "1.2.0", "--archive", str(out.parent / "digits.erpkg"),
    ])  # fmt: skip
    assert rc == 0
    return out


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_package_is_int8_qdq_with_int8_weights(cnn_package):
    model = onnx.load(str(cnn_package / "model.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= 4
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    for op in ("Conv", "Gemm"):
        node = next(n for n in model.graph.node if n.op_type == op)
        weight_dq = producer[node.input[1]]
        assert weight_dq.op_type == "DequantizeLinear"
        assert inits[weight_dq.input[0]].dtype == np.int8  # weights stored as int8
        assert inits[weight_dq.input[1]].size > 1  # per-channel scales (profile per_channel: true)
        assert producer[node.input[0]].op_type == "DequantizeLinear"  # activations quantized too
    # activations: uint8 with a zero point of their own (asymmetric), onnxruntime's fast u8 x s8 kernels
    act_zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert act_zps and all(z.dtype == np.uint8 for z in act_zps)
    assert any(int(z) != 0 for z in act_zps)  # signed tensors (the logits) sit off zero: asymmetric
    m = load_package(cnn_package, allow_unsigned=True).manifest
    assert m.quantization.precision == "int8" and m.quantization.method == "ort-static-qdq-u8a-s8w"
    assert m.quantization.symmetric_activations is False
    assert m.quantization.per_channel is True and m.quantization.calibration_samples == 80
    # the profile asks for integer I/O: the graph takes and returns uint8 (the u8 activations' type), and the
    # manifest carries the scale and zero point the device quantizes and dequantizes with
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert producer[model.graph.output[0].name].op_type != "DequantizeLinear"
    readers = [n for n in model.graph.node if "image" in n.input]
    assert readers and all(n.op_type == "DequantizeLinear" for n in readers)  # no QuantizeLinear on the input
    assert m.inputs[0].dtype == "uint8" and m.inputs[0].quantization.scale == pytest.approx((1 / 255,))
    assert m.outputs.tensors[0].dtype == "uint8" and m.outputs.tensors[0].quantization is not None
    assert (m.inputs[0].layout, m.inputs[0].color_order, tuple(m.inputs[0].shape)) == ("NCHW", "GRAY", (1, 1, 16, 16))


def test_int8_agrees_with_float_on_held_back_frames(cnn_package, onnx_cnn, digits):
    """Stated tolerance: top-1 agreement >= 0.95 and mean cosine >= 0.98 on 200 digits never seen in calibration."""
    m = load_package(cnn_package, allow_unsigned=True).manifest
    pre = ImagePreprocessor(InputSpec.model_validate(m.inputs[0].model_dump()), frame_order="GRAY")  # uint8 LUT
    float_spec = m.inputs[0].model_copy(update={"dtype": "float32", "quantization": None})
    pre_f = ImagePreprocessor(float_spec, frame_order="GRAY")
    f_sess, q_sess = _session(onnx_cnn), _session(cnn_package / "model.onnx")
    out_q = m.outputs.tensors[0].quantization
    agree, cos = 0, []
    frames = digits.frames[1500:1700]
    for frame in frames:
        f = f_sess.run(None, {"image": pre_f(frame)[0]})[0].ravel()
        q = dequantize(q_sess.run(None, {"image": pre(frame)[0]})[0], out_q).ravel()
        agree += int(f.argmax() == q.argmax())
        cos.append(float(f @ q / np.linalg.norm(f) / np.linalg.norm(q)))
    assert agree / len(frames) >= 0.95
    assert np.mean(cos) >= 0.98
    # the float model itself is a real classifier (not a constant): it gets most digits right
    labels = [int(f_sess.run(None, {"image": pre_f(fr)[0]})[0].argmax()) for fr in frames]
    assert np.mean(np.array(labels) == digits.y[1500:1700]) > 0.8
    assert m.accuracy is not None and m.accuracy.passed and m.accuracy.top1_agreement >= 0.98


def test_golden_pairs_replay_and_reference_stats(cnn_package):
    m = load_package(cnn_package, allow_unsigned=True).manifest
    assert m.golden is not None and 3 <= m.golden.count <= 5 and m.golden.top1_must_match
    sess = _session(cnn_package / "model.onnx")
    out_q = m.outputs.tensors[0].quantization
    assert m.golden.atol == pytest.approx(1.5 * out_q.scale[0])  # stated: 1.5 steps of the uint8 output
    with np.load(cnn_package / m.golden.file) as g:
        for i in range(m.golden.count):
            got = sess.run(None, {"image": g[f"input_{i}_0"]})[0]
            assert np.max(np.abs(dequantize(got, out_q) - dequantize(g[f"output_{i}_0"], out_q))) <= m.golden.atol
            assert g[f"input_{i}_0"].dtype == np.uint8 and g[f"input_{i}_0"].shape == (1, 1, 16, 16)  # as fed
            assert g[f"output_{i}_0"].dtype == np.uint8
    ref = m.reference
    assert ref is not None and ref.samples == 80 and len(ref.channel_mean) == 1
    assert ref.brightness is not None and abs(sum(ref.brightness.counts) - 1) < 1e-6
    assert ref.class_histogram is not None and len(ref.class_histogram) == 10
    assert m.outputs.task == "classification" and m.outputs.decoding.activation == "none"


def test_signature_verifies_and_archive_loads(cnn_package, session_keys, tmp_path):
    trust = TrustStore.from_paths([str(session_keys[1])])
    assert load_package(cnn_package, trust=trust).signer is not None
    assert main(["verify", str(cnn_package), "--key", str(session_keys[1])]) == 0
    assert load_package(cnn_package.parent / "digits.erpkg", trust=trust).manifest.version == "1.2.0"
    manifest = json.loads((cnn_package / "manifest.json").read_text())
    assert manifest["source"]["format"] == "onnx" and manifest["tools"]["onnxruntime"]


def test_tensorrt_profile_gets_symmetric_activations(onnx_cnn, data_dir, tmp_path):
    """jetson-nano (TensorRT) asks for symmetric int8 activations: every activation zero point is 0."""
    out = tmp_path / "pkg"
    assert main(["convert", str(onnx_cnn), "--profile", "jetson-nano", "--calibration", str(data_dir / "calib"),
                 "--out", str(out), "-q"]) == 0  # fmt: skip
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    q = load_package(out, allow_unsigned=True).manifest.quantization
    assert q.symmetric_activations is True and q.calibration_method == "entropy"  # the profile's first method
    assert q.method == "ort-static-qdq-s8a-s8w"
    m = load_package(out, allow_unsigned=True).manifest  # the Jetson profiles ask for float32 I/O: the QDQ edges stay
    assert m.inputs[0].dtype == "float32" and m.inputs[0].quantization is None
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.outputs.tensors[0].dtype == "float32"


def test_float16_target_keeps_float32_io_and_matches_float(onnx_cnn, data_dir, tmp_path):
    out = tmp_path / "pkg"
    assert main(["convert", str(onnx_cnn), "--profile", "x86-laptop", "--calibration", str(data_dir / "calib"),
                 "--out", str(out), "--precision", "float16", "-q"]) == 0  # fmt: skip
    model = onnx.load(str(out / "model.onnx"))
    assert {numpy_helper.to_array(i).dtype for i in model.graph.initializer if i.name.startswith(("conv", "fc"))} == {
        np.dtype(np.float16)
    }
    m = load_package(out, allow_unsigned=True).manifest
    assert m.inputs[0].dtype == "float32" and m.outputs.tensors[0].dtype == "float32"
    assert m.accuracy.cosine_similarity > 0.999 and m.accuracy.top1_agreement == 1.0  # stated: float16 ~ float32
