"""Float TFLite source: load a ``.tflite`` (also old ones without signature defs and with float16 weights).

The loaded model's ``tflite_path`` is a float32-constant flatbuffer with a signature def (see
:mod:`converters.sources.tflite_graph`), which TensorFlow's post-training calibrator accepts. ``tflite_to_onnx``
turns it into float ONNX through tf2onnx for the ONNX int8 target.
"""

from __future__ import annotations

import importlib.metadata
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converters.model import FloatModel, TensorInfo
from converters.sources import tflite_graph
from edge_runtime.errors import ConversionError, MissingDependencyError, first_line
from edge_runtime.fsutil import atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

_FLOAT_TYPES = ("FLOAT32", "FLOAT16")


def package_version(dist: str) -> str | None:
    """Installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def tool_versions(*dists: str) -> dict[str, str]:
    """{distribution: version} for those of ``dists`` that are installed."""
    return {d: v for d in dists if (v := package_version(d)) is not None}


def tensor_infos(model: object, indices: list[int]) -> tuple[TensorInfo, ...]:
    """TensorInfo for tensors of subgraph 0 (``shape_signature`` -1 kept as dynamic)."""
    sg = model.subgraphs[0]  # type: ignore[attr-defined]
    out = []
    for i in indices:
        t = sg.tensors[i]
        shape = t.shapeSignature if t.shapeSignature is not None and len(t.shapeSignature) else t.shape
        dtype = tflite_graph.type_name(t.type).lower()
        out.append(TensorInfo(tflite_graph.tensor_name(t), tuple(int(d) for d in shape), dtype))
    return tuple(out)


def _check_float_io(path: Path, infos: tuple[TensorInfo, ...]) -> None:
    for info in infos:
        if info.dtype.upper() not in _FLOAT_TYPES:
            raise ConversionError(
                f"{path.name} is not a float TFLite model (tensor {info.name!r} is {info.dtype}); "
                "give the float model to quantize it"
            )


def _smoke_test(path: Path) -> None:
    """Load the rewritten model once so a broken rewrite fails here, not on the device."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise MissingDependencyError("ai-edge-litert", "tflite") from exc
    try:
        Interpreter(model_path=str(path)).allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        raise ConversionError(f"{path.name} cannot be loaded by LiteRT: {str(exc).splitlines()[0]}") from exc


def load_tflite(path: Path, workdir: Path) -> FloatModel:
    """Load a float ``.tflite`` file into a FloatModel whose ``tflite_path`` holds float32 constants."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"model file not found: {path}")
    buf = path.read_bytes()
    unfolded, report = tflite_graph.unfold_float16(buf, what=path.name)
    model = tflite_graph.parse(unfolded, what=path.name)
    sg = model.subgraphs[0]
    inputs = tensor_infos(model, list(sg.inputs))
    outputs = tensor_infos(model, list(sg.outputs))
    _check_float_io(path, inputs + outputs)
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "float32.tflite"
    atomic_write_bytes(out, unfolded)
    _smoke_test(out)
    if report.dequantize_folded or report.signature_added:
        log.info(
            "%s: folded %d float16 DEQUANTIZE ops, %s signature def",
            path.name,
            report.dequantize_folded,
            "added a" if report.signature_added else "kept the",
        )
    return FloatModel(
        source_format="tflite",
        source_path=path,
        source_sha256=sha256_file(path),
        inputs=inputs,
        outputs=outputs,
        workdir=workdir,
        tflite_path=out,
        tool_versions=tool_versions("ai-edge-litert", "flatbuffers"),
    )


def tflite_to_onnx(fm: FloatModel, opset: int = 17) -> Path:
    """Float TFLite -> float ONNX with tf2onnx (cached in ``fm.onnx_path``). Names follow the TFLite tensors."""
    if fm.onnx_path is not None and fm.onnx_path.is_file():
        return fm.onnx_path
    if fm.tflite_path is None:
        raise ConversionError("no float TFLite model to convert to ONNX")
    tf2onnx = import_tf2onnx()

    def convert(output_path: str) -> None:
        with warnings.catch_warnings():  # tf2onnx reads the model with the deprecated tf.lite.Interpreter
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated")
            tf2onnx.convert.from_tflite(str(fm.tflite_path), opset=opset, output_path=output_path)

    return write_tf2onnx(fm, convert)


def import_tf2onnx() -> Any:
    """The tf2onnx module, or MissingDependencyError naming the extra that brings it."""
    try:
        import tf2onnx
    except ImportError as exc:
        raise MissingDependencyError("tf2onnx", "convert") from exc
    return tf2onnx


def write_tf2onnx(fm: FloatModel, convert: Callable[[str], object]) -> Path:
    """Run ``convert(output_path)`` (a tf2onnx call) into ``fm.workdir/float32.onnx`` and cache it in ``fm``.

    The file appears under its name only when tf2onnx succeeded; a tf2onnx failure becomes a ConversionError.
    """
    out = fm.workdir / "float32.onnx"
    tmp = fm.workdir / ".float32.onnx.tmp"
    try:
        convert(str(tmp))
    except Exception as exc:  # tf2onnx raises bare ValueError/KeyError/NotImplementedError on unsupported ops
        tmp.unlink(missing_ok=True)
        raise ConversionError(f"tf2onnx cannot convert {fm.source_path.name}: {first_line(exc)}") from exc
    tmp.replace(out)
    fm.onnx_path = out
    fm.tool_versions.update(tool_versions("tf2onnx", "onnx"))
    return out
