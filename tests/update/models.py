"""Models that pass their golden pairs but fail in the field, when the input's variance is high: one gives NaN
scores (``nan_package``), one raises inside onnxruntime on every such frame (``raising_package``: an Expand of
[1, 3] to [1, 4], which onnxruntime refuses while running the node).

Golden frames (smooth, like real scenes) have a low pixel variance; the agent's synthetic source sends
uniform random frames, whose variance is above the threshold, so every live inference fails: a real model
that loads, passes its smoke test, and then fails its health window.
"""

from __future__ import annotations

import io
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.package.manifest import InputSpec
from edge_runtime.package.store import Package, write_package
from edge_runtime.preprocess import ImagePreprocessor


def _init(name: str, a: np.ndarray):  # type: ignore[no-untyped-def]
    return numpy_helper.from_array(np.ascontiguousarray(a), name)


def _frames(count: int) -> list[np.ndarray]:
    """Smooth frames (a base colour, mild noise, a ramp): low spread, like real scenes."""
    rng = np.random.default_rng(5)
    ramp = np.linspace(-50, 50, 64)[None, :, None]
    return [np.clip(rng.integers(40, 200, 3) + rng.normal(0, 30, (48, 64, 3)) + ramp, 0, 255).astype(np.uint8)
            for _ in range(count)]


def _save(graph, path: Path) -> Path:  # type: ignore[no-untyped-def]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _golden(feeds: list[np.ndarray], outs: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    arrays = {f"input_{i}_0": x for i, x in enumerate(feeds)} | {f"output_{i}_0": y for i, y in enumerate(outs)}
    np.savez(buf, **arrays)
    return buf.getvalue()

_SPEC = {
    "name": "input", "shape": [1, 32, 32, 3], "dtype": "float32", "kind": "image", "layout": "NHWC",
    "color_order": "BGR", "resize": "stretch", "normalization": {"mean": [127.5], "std": [64.0]},
}  # fmt: skip


def _graph(threshold: float, fault: str = "nan"):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "w"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["p"], axis=1),
        helper.make_node("ReduceMean", ["input"], ["mu"], axes=[1, 2], keepdims=1),
        helper.make_node("Sub", ["input", "mu"], ["centred"]),
        helper.make_node("Mul", ["centred", "centred"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], keepdims=0),
    ]
    if fault == "nan":
        nodes += [
            helper.make_node("Sub", ["thr", "var"], ["room"]),
            helper.make_node("Log", ["room"], ["log"]),
            helper.make_node("Mul", ["log", "zero"], ["nan_or_zero"]),
            helper.make_node("Add", ["p", "nan_or_zero"], ["probs"]),
        ]
    else:  # cols = 3 + (var > thr): Expand(p [1, 3], [1, cols]) cannot broadcast 3 to 4 and fails at run time
        nodes += [
            helper.make_node("Greater", ["var", "thr"], ["high"]),
            helper.make_node("Cast", ["high"], ["k"], to=TensorProto.INT64),
            helper.make_node("Add", ["k", "three"], ["cols"]),
            helper.make_node("Concat", ["one", "cols"], ["shape"], axis=0),
            helper.make_node("Expand", ["p", "shape"], ["probs"]),
        ]
    inits = [_init("w", rng.normal(0, 1, (3, 3)).astype(np.float32)),
             _init("thr", np.array(threshold, np.float32)), _init("zero", np.array(0.0, np.float32)),
             _init("one", np.array([1], np.int64)),
             _init("three", np.array([3], np.int64))]
    return helper.make_graph(
        nodes, "nan_in_the_field", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])], inits,
    )


def _spread(x: np.ndarray) -> float:
    """Mean squared deviation from the per-channel mean: what the graph computes."""
    return float(((x - x.mean(axis=(1, 2), keepdims=True)) ** 2).mean())


def nan_package(out_dir: Path, version: str, sign_key) -> Package:  # type: ignore[no-untyped-def]
    return _faulty_package(out_dir, version, sign_key, "nan")


def raising_package(out_dir: Path, version: str, sign_key) -> Package:  # type: ignore[no-untyped-def]
    return _faulty_package(out_dir, version, sign_key, "raise")


def _faulty_package(out_dir: Path, version: str, sign_key, fault: str) -> Package:  # type: ignore[no-untyped-def]
    pre = ImagePreprocessor(InputSpec.model_validate(_SPEC), "BGR")
    feeds = [pre(f)[0] for f in _frames(6)]
    threshold = 1.1 * max(_spread(f) for f in feeds)
    uniform = pre(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))[0]
    assert _spread(uniform) > threshold, "synthetic frames must cross the threshold"
    model = _save(_graph(threshold, fault), Path(tempfile.mkdtemp(prefix="nan-")) / "model.onnx")
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = [sess.run(None, {"input": x})[0] for x in feeds]
    assert all(np.isfinite(o).all() for o in outputs)
    rest = {
        "inputs": [_SPEC],
        "outputs": {"task": "classification", "labels": ["a", "b", "c"],
                    "tensors": [{"name": "probs", "shape": [1, 3], "dtype": "float32"}],
                    "decoding": {"type": "classification", "output": "probs", "top_k": 3}},
        "quantization": {"precision": "float32", "method": "none"},
        "golden": {"file": "golden.npz", "count": len(feeds), "atol": 1e-4, "top1_must_match": True},
    }  # fmt: skip
    files: dict[str, bytes | Path] = {"model.onnx": model, "golden.npz": _golden(feeds, outputs)}
    fields = {"name": "tiny", "version": version, "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "format": "onnx", "profile": "x86-laptop", "model_file": "model.onnx", **rest}
    return write_package(out_dir, files, fields, sign_key)
