"""Keras (``.keras``, ``.h5``) and TensorFlow SavedModel sources, and their float ONNX export.

TensorFlow is imported inside the functions. Keras 3 cannot load a SavedModel as a Keras model, so a SavedModel
stays a SavedModel (TFLiteConverter.from_saved_model takes it) and its ``serving_default`` signature describes
the inputs and outputs. ONNX export goes through ``tf2onnx.convert.from_function`` with a fixed batch-1 input
signature (``from_keras`` fails under Keras 3).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from converters.model import FloatModel, TensorInfo
from converters.sources.tflite import import_tf2onnx, tool_versions, write_tf2onnx
from edge_runtime.errors import ConversionError, MissingDependencyError, first_line
from edge_runtime.fsutil import sha256_file, tree_sha256

SIGNATURE_KEY = "serving_default"


def import_tensorflow() -> Any:
    """TensorFlow, quietly, or MissingDependencyError naming the extra."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise MissingDependencyError("tensorflow", "convert") from exc
    return tf


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())


def _dims(shape: Any) -> tuple[int, ...]:
    return tuple(-1 if d is None else int(d) for d in shape)


def _keras_infos(tensors: list[Any], prefix: str) -> tuple[TensorInfo, ...]:
    out = []
    for i, t in enumerate(tensors):
        name = getattr(t, "name", None) or f"{prefix}_{i}"
        out.append(TensorInfo(str(name).split(":")[0], _dims(t.shape), str(t.dtype).replace("tf.", "")))
    return tuple(out)


def _load_keras_file(path: Path) -> Any:
    tf = import_tensorflow()
    try:
        model = tf.keras.models.load_model(str(path), compile=False)
    except Exception as exc:  # keras raises ValueError, OSError, zipfile/h5py errors on a bad file
        raise ConversionError(f"cannot load Keras model {path.name}: {first_line(exc)}") from exc
    if not getattr(model, "inputs", None):
        raise ConversionError(f"Keras model {path.name} has no defined inputs (build it with an Input layer)")
    return model


def _saved_model_signature(path: Path) -> tuple[Any, Any]:
    """(loaded object, its serving signature); keep the object alive while the signature is used."""
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # tensorflow raises many error types on a corrupt SavedModel
        raise ConversionError(f"cannot load SavedModel {path.name}: {first_line(exc)}") from exc
    if SIGNATURE_KEY not in loaded.signatures:
        raise ConversionError(f"SavedModel {path.name} has no '{SIGNATURE_KEY}' signature")
    return loaded, loaded.signatures[SIGNATURE_KEY]


def _signature_infos(fn: Any) -> tuple[tuple[TensorInfo, ...], tuple[TensorInfo, ...]]:
    specs = fn.structured_input_signature[1]
    inputs = tuple(TensorInfo(k, _dims(s.shape), s.dtype.name) for k, s in sorted(specs.items()))
    outs = fn.structured_outputs
    outputs = tuple(TensorInfo(k, _dims(t.shape), t.dtype.name) for k, t in sorted(outs.items()))
    return inputs, outputs


def load_keras(path: Path, workdir: Path) -> FloatModel:
    """Load a ``.keras``/``.h5`` file or a SavedModel folder into a FloatModel."""
    path = Path(path)
    if not path.exists():
        raise ConversionError(f"model not found: {path}")
    workdir.mkdir(parents=True, exist_ok=True)
    versions = tool_versions("tensorflow", "tensorflow-cpu", "keras")
    if is_saved_model(path):
        inputs, outputs = _signature_infos(_saved_model_signature(path)[1])
        return FloatModel(
            "savedmodel",
            path,
            tree_sha256(path),
            inputs,
            outputs,
            workdir,
            saved_model_dir=path,
            tool_versions=versions,
        )
    if path.suffix.lower() not in (".keras", ".h5", ".hdf5") or not path.is_file():
        raise ConversionError(f"{path.name} is not a .keras/.h5 file or a SavedModel folder")
    model = _load_keras_file(path)
    inputs = _keras_infos(list(model.inputs), "input")
    outputs = _keras_infos(list(model.outputs), "output")
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(outputs) and len(set(names)) == len(names):  # layer names beat 'keras_tensor_8'
        outputs = tuple(TensorInfo(n, o.shape, o.dtype) for n, o in zip(names, outputs, strict=True))
    return FloatModel(
        "keras", path, sha256_file(path), inputs, outputs, workdir, keras_model=model, tool_versions=versions
    )


def _batch1(shape: tuple[int, ...], name: str) -> list[int | None]:
    if any(d < 0 for d in shape[1:]):
        raise ConversionError(f"input {name!r} has a dynamic dimension other than the batch: {list(shape)}")
    return [1, *shape[1:]]


def _concrete_function(fm: FloatModel) -> tuple[Any, list[Any]]:
    """(tf.function, input signature) with batch 1, for a Keras model or a SavedModel signature."""
    tf = import_tensorflow()
    specs = [tf.TensorSpec(_batch1(i.shape, i.name), tf.as_dtype(i.dtype), name=i.name) for i in fm.inputs]
    if fm.keras_model is not None:
        model = fm.keras_model
        out_names = [o.name for o in fm.outputs]

        def call(*args: Any) -> Any:
            result = model(list(args) if len(args) > 1 else args[0], training=False)
            result = result if isinstance(result, (list, tuple)) else [result]
            return {n: tf.identity(r, name=n) for n, r in zip(out_names, result, strict=True)}

        return tf.function(call, input_signature=specs), specs
    if fm.saved_model_dir is None:
        raise ConversionError("no Keras model or SavedModel to export to ONNX")
    loaded, sig = _saved_model_signature(fm.saved_model_dir)
    names = [i.name for i in fm.inputs]

    def call_sig(*args: Any) -> Any:
        _ = loaded  # the signature's variables live as long as the loaded object
        return sig(**dict(zip(names, args, strict=True)))

    return tf.function(call_sig, input_signature=specs), specs


def keras_to_onnx(fm: FloatModel, opset: int = 17) -> Path:
    """Keras/SavedModel -> float ONNX (batch 1) with tf2onnx, cached in ``fm.onnx_path``."""
    if fm.onnx_path is not None and fm.onnx_path.is_file():
        return fm.onnx_path
    tf2onnx = import_tf2onnx()
    fn, specs = _concrete_function(fm)

    def convert(output_path: str) -> None:
        tf2onnx.convert.from_function(fn, input_signature=specs, opset=opset, output_path=output_path)

    return write_tf2onnx(fm, convert)
