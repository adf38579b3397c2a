"""ONNX source: check the file, fix dynamic dimensions, and make sure onnxruntime can run it."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from converters.model import FloatModel, InputFixes, TensorInfo
from edge_runtime.errors import ConversionError
from edge_runtime.fsutil import sha256_file

log = logging.getLogger(__name__)


def _dims(value_info) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


def _dtype(value_info) -> str:  # type: ignore[no-untyped-def]
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(value_info.type.tensor_type.elem_type))


def tensor_infos(graph_values) -> tuple[TensorInfo, ...]:  # type: ignore[no-untyped-def]
    return tuple(TensorInfo(v.name, _dims(v), _dtype(v)) for v in graph_values)


def graph_inputs(model):  # type: ignore[no-untyped-def]
    """Real inputs: graph inputs that are not initializers (older exporters list weights as inputs too)."""
    init = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def fix_input_shapes(model, input_shape: Sequence[int] | None):  # type: ignore[no-untyped-def]
    """Set a dynamic batch dimension to 1 and other dynamic dimensions from ``input_shape`` (first input)."""
    from converters.sources.onnx_fold import set_shapes

    return set_shapes(model, input_shape, {}, set())


def check_runnable(path: Path, label: str) -> None:
    """Load the model in onnxruntime: an operator it cannot run fails here, with one line naming ``label``."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented classes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        first = re.sub(r"Load model from \S+ failed:\s*", "", first)  # the temp path says nothing to the user
        raise ConversionError(f"onnxruntime cannot run {label}: {first[:300]}") from exc


def load_onnx_model(path: Path):  # type: ignore[no-untyped-def]
    """onnx.load + onnx.checker, with a corrupt or truncated file reported in one line."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise ConversionError(f"{path} is not a readable ONNX model (corrupt or truncated?): {exc}") from exc
    if not model.graph.node:
        raise ConversionError(f"{path} is not a readable ONNX model (empty graph: corrupt or truncated?)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConversionError(f"{path} is not a valid ONNX model: {first[:300]}") from exc
    return model


def finish_onnx(model, fm_kwargs: dict, workdir: Path, input_shape: Sequence[int] | None,  # type: ignore[no-untyped-def]
                fixed: InputFixes | None = None) -> FloatModel:  # fmt: skip
    """Fix shapes and constants (folded into the graph), infer the rest, save into ``workdir`` as
    model.float.onnx and check onnxruntime runs it."""
    import onnx

    from converters.sources.onnx_fold import fold

    fixed = fixed or InputFixes()
    model = fold(model, input_shape, fixed.shapes, fixed.constants)
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # shape inference is best effort; onnxruntime checks the model next
        log.debug("shape inference failed: %s", exc)
    out = workdir / "model.float.onnx"
    onnx.save(model, str(out))
    check_runnable(out, Path(fm_kwargs["source_path"]).name)
    tools = dict(fm_kwargs.pop("tool_versions", {}))
    tools["onnx"] = onnx.__version__
    return FloatModel(
        inputs=tensor_infos(graph_inputs(model)),
        outputs=tensor_infos(model.graph.output),
        workdir=workdir,
        onnx_path=out,
        tool_versions=tools,
        **fm_kwargs,
    )


def load_onnx(path: Path, workdir: Path, input_shape: Sequence[int] | None = None,
              fixed: InputFixes | None = None) -> FloatModel:  # fmt: skip
    """An ONNX file -> FloatModel whose ``onnx_path`` is a checked, shape-fixed (and constant-folded) copy."""
    model = load_onnx_model(path)
    kwargs = {"source_format": "onnx", "source_path": path, "source_sha256": sha256_file(path)}
    return finish_onnx(model, kwargs, workdir, input_shape, fixed)
