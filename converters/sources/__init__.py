"""Model sources: one loader per source format, chosen from the file name, in one table.

Every loader returns a :class:`converters.model.FloatModel`. A loader whose library is missing fails with
MissingDependencyError naming the extra to install; the others keep working.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from pathlib import Path

from converters.model import FloatModel, InputFixes, SourceFormat
from edge_runtime.errors import ConversionError, MissingDependencyError

# format -> (module, loader, extra that provides its libraries)
SOURCES: dict[SourceFormat, tuple[str, str, str]] = {
    "onnx": ("converters.sources.onnx", "load_onnx", "convert"),
    "keras": ("converters.sources.keras", "load_keras", "convert"),
    "savedmodel": ("converters.sources.keras", "load_keras", "convert"),
    "tflite": ("converters.sources.tflite", "load_tflite", "convert"),
    "sklearn": ("converters.sources.sklearn", "load_sklearn", "convert"),
    "torch": ("converters.sources.torch", "load_torch", "torch"),
}

SUFFIXES: dict[str, SourceFormat] = {
    ".onnx": "onnx",
    ".keras": "keras",
    ".h5": "keras",
    ".hdf5": "keras",
    ".tflite": "tflite",
    ".pkl": "sklearn",
    ".pickle": "sklearn",
    ".joblib": "sklearn",
    ".pt": "torch",
    ".pth": "torch",
}

_HEAVY = {"tensorflow", "tf2onnx", "onnx", "skl2onnx", "sklearn", "torch", "keras", "joblib", "ai_edge_litert"}


def detect_format(path: Path) -> SourceFormat:
    """Source format from the path: a SavedModel folder, or the file suffix."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ConversionError(f"{path} is a folder but not a TensorFlow SavedModel (no saved_model.pb)")
    if not path.exists():
        raise ConversionError(f"source model {path} does not exist")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        known = ", ".join(sorted(SUFFIXES))
        raise ConversionError(f"cannot tell the format of {path.name}: expected one of {known} or a SavedModel folder")
    return fmt


def _loader(fmt: SourceFormat):  # type: ignore[no-untyped-def]
    module_name, func, extra = SOURCES[fmt]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _HEAVY:
            raise MissingDependencyError(f"{exc.name} (needed for {fmt} sources)", extra) from exc
        raise ConversionError(f"{fmt} sources are not available in this build ({exc.name} is missing)") from exc
    return getattr(module, func)


def load_source(
    path: Path, workdir: Path, input_shape: Sequence[int] | None = None, fixed: InputFixes | None = None
) -> FloatModel:
    """Load any supported source into a FloatModel (files it makes go into ``workdir``). ``fixed`` (named input
    shapes and constants) applies to ONNX sources, whose graph they are folded into."""
    path = Path(path)
    fmt = detect_format(path)
    loader = _loader(fmt)
    if fixed:
        if "fixed" not in inspect.signature(loader).parameters:
            raise ConversionError(f"--const and --input-shape NAME=... apply to ONNX models; for a {fmt} source "
                                  "give one bare --input-shape, or export the model to ONNX first")  # fmt: skip
        return loader(path, workdir, input_shape=input_shape, fixed=fixed)
    if "input_shape" in inspect.signature(loader).parameters:
        return loader(path, workdir, input_shape=input_shape)
    return loader(path, workdir)


def ensure_onnx(fm: FloatModel) -> Path:
    """The float ONNX form of ``fm``, converting (and caching on ``fm``) when the source was not ONNX."""
    if fm.onnx_path is not None:
        return fm.onnx_path
    if fm.source_format in ("keras", "savedmodel"):
        convert = _function("converters.sources.keras", "keras_to_onnx")
    elif fm.source_format == "tflite":
        convert = _function("converters.sources.tflite", "tflite_to_onnx")
    else:
        raise ConversionError(f"no ONNX form for a {fm.source_format} source")
    fm.onnx_path = Path(convert(fm))
    return fm.onnx_path


def _function(module_name: str, name: str):  # type: ignore[no-untyped-def]
    try:
        return getattr(importlib.import_module(module_name), name)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in _HEAVY:
            raise MissingDependencyError(f"{exc.name}", "convert") from exc
        raise ConversionError(f"{module_name}.{name} is not available in this build") from exc
