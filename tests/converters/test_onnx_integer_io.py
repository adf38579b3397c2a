"""Integer I/O for int8 ONNX: the QDQ edge nodes go where the profile asks for int8/uint8 inputs and outputs.

Structure: the graph input and output take the quantizer's integer type and no QuantizeLinear reads the input.
Numbers: on 200 held-back digits the integer model, fed by the device's lookup-table preprocessing, agrees with
the float-I/O QDQ model (fed float tensors) within one quantization step of the output.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from converters.build import packaged_specs
from converters.calibration import ArrayFile, InputBuilder, Subset
from converters.evaluate import ModelRunner
from converters.targets import onnx_int8, onnx_io
from edge_runtime.package.manifest import InputSpec
from edge_runtime.preprocess import ImagePreprocessor
from edge_runtime.profiles import load_profile

SPEC = InputSpec(name="image", shape=(1, 1, 16, 16), dtype="float32", kind="image", layout="NCHW", color_order="GRAY")


@pytest.fixture(scope="module")
def prepared(onnx_cnn, tmp_path_factory):
    return onnx_int8.preprocess(onnx_cnn, tmp_path_factory.mktemp("io") / "prepared.onnx")


def _calibration(data_dir):
    data = ArrayFile(data_dir / "frames_calib.npy", ["image"])
    build = InputBuilder([SPEC], data.frame_order, "frames")
    return lambda: build.over(Subset(data))


def _quantize(prepared, data_dir, tmp_path, profile):
    calibration = _calibration(data_dir)
    qm = onnx_int8.quantize_onnx(prepared, calibration, profile, tmp_path / "qdq.onnx")
    sample = next(iter(calibration()))
    return qm, onnx_io.integer_io(qm, profile.quantization, tmp_path / "io.onnx", sample)


def test_x86_profile_gets_uint8_io_that_agrees_with_float_io_within_one_step(prepared, data_dir, digits, tmp_path):
    qm, io = _quantize(prepared, data_dir, tmp_path, load_profile("x86-laptop"))
    # structure: uint8 (the u8 activations' type) in and out, the edge Quantize/DequantizeLinear gone
    model = onnx.load(str(io.path))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.UINT8
    assert [n.op_type for n in model.graph.node if "image" in n.input] == ["DequantizeLinear"]
    producer = {o: n for n in model.graph.node for o in n.output}
    assert producer["scores"].op_type == "QuantizeLinear"
    assert [t.dtype for t in io.inputs + io.outputs] == ["uint8", "uint8"] and io.float_io_path == qm.path
    in_q, out_q = io.input_quantization[0], io.output_quantization[0]
    assert in_q.scale == pytest.approx((1 / 255,), rel=1e-3) and in_q.zero_point == (0,)  # pixels/255 in [0, 1]
    # numbers: device preprocessing (uint8 LUT) into the integer model vs float tensors into the float-I/O model
    pre_int = ImagePreprocessor(packaged_specs([SPEC], io)[0], "GRAY")
    pre_float = ImagePreprocessor(SPEC, "GRAY")
    float_io, int_io = ModelRunner(qm.path), ModelRunner(io.path, output_quant=io.output_quantization)
    worst = 0.0
    for frame in digits.frames[1500:1700]:
        x = pre_int(frame)[0]
        assert x.dtype == np.uint8
        got = int_io.run_float([x])[0]
        ref = float_io.run([pre_float(frame)[0]])[0]
        worst = max(worst, float(np.max(np.abs(got - ref))))
    assert worst <= out_q.scale[0] * 1.001, (worst, out_q.scale[0])
    # state tensors (fed back output -> input, different scales at each end) are left float
    sample = next(iter(_calibration(data_dir)()))
    policy = load_profile("x86-laptop").quantization
    assert onnx_io.integer_io(qm, policy, tmp_path / "state.onnx", sample, keep_float={"image", "scores"}) is qm


def test_symmetric_int8_profile_gets_int8_io_and_float_profile_keeps_float(prepared, data_dir, tmp_path):
    jetson = load_profile("jetson-nano")  # TensorRT: symmetric int8 activations, float32 I/O
    qm, same = _quantize(prepared, data_dir, tmp_path, jetson)
    assert same is qm and onnx.load(str(qm.path)).graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    q = jetson.quantization.model_copy(update={"input_dtype": "int8", "output_dtype": "int8"})
    _, io = _quantize(prepared, data_dir, tmp_path, jetson.model_copy(update={"quantization": q}))
    model = onnx.load(str(io.path))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT8
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.INT8
    assert io.input_quantization[0].zero_point == (0,) and io.output_quantization[0].zero_point == (0,)


def _qdq_graph(extra_reader: bool) -> onnx.ModelProto:
    """x -> Q -> DQ -> Relu -> Q -> DQ -> y; with ``extra_reader`` the input's Q output also feeds a Cast and
    the output's float value also feeds a Neg (neither is the QDQ pattern)."""
    c = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.float32 if "s" in name else np.uint8), name)  # noqa: E731
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Relu", ["xd"], ["r"]),
        helper.make_node("QuantizeLinear", ["r", "s2", "z2"], ["rq"]),
        helper.make_node("DequantizeLinear", ["rq", "s2", "z2"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])]
    if extra_reader:
        nodes += [helper.make_node("Cast", ["xq"], ["xc"], to=TensorProto.FLOAT), helper.make_node("Neg", ["y"], ["n"])]
        outputs += [helper.make_tensor_value_info(k, TensorProto.FLOAT, [1, 4]) for k in ("xc", "n")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], outputs,
        [c("s", 0.1), c("z", 128), c("s2", 0.05), c("z2", 0)],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_only_the_qdq_pattern_is_rewritten():
    model = _qdq_graph(extra_reader=False)
    inits = {i.name: i for i in model.graph.initializer}
    assert onnx_io.integer_input(model, "x", inits)[0].zero_point == (128,)
    assert onnx_io.integer_output(model, "y", inits)[0].scale == pytest.approx((0.05,))
    assert [n.op_type for n in model.graph.node] == ["DequantizeLinear", "Relu", "QuantizeLinear"]
    onnx.checker.check_model(model)
    # the quantized input also read by a non-QDQ op, the float output also read by another op: left alone
    other = _qdq_graph(extra_reader=True)
    before = other.SerializeToString()
    inits = {i.name: i for i in other.graph.initializer}
    assert onnx_io.integer_input(other, "x", inits) is None
    assert onnx_io.integer_output(other, "y", inits) is None
    assert other.SerializeToString() == before
