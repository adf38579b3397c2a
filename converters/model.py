"""The types passed between converter stages: sources produce a FloatModel, targets produce a QuantizedModel."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edge_runtime.package.manifest import Quantization

SourceFormat = Literal["onnx", "keras", "savedmodel", "tflite", "sklearn", "torch"]


@dataclass(frozen=True)
class InputFixes:
    """What the user fixed about a model's inputs by name: static shapes and constant values (ONNX sources)."""

    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    constants: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.shapes or self.constants)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # -1 for dynamic dimensions
    dtype: str  # numpy dtype name


@dataclass
class FloatModel:
    """A loaded float model, in the representation(s) a target can consume.

    ``onnx_path``: a float ONNX file (input of the ONNX int8 target).
    ``tflite_path``: a float TFLite flatbuffer with float32 constants (input of the TFLite int8 target when no
    Keras/SavedModel is at hand). ``saved_model_dir`` / ``keras_model``: what TFLiteConverter takes.
    Sources fill what they can; targets convert lazily (e.g. Keras -> ONNX via tf2onnx) and cache the result here.
    """

    source_format: SourceFormat
    source_path: Path
    source_sha256: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    workdir: Path
    onnx_path: Path | None = None
    tflite_path: Path | None = None
    saved_model_dir: Path | None = None
    keras_model: Any = None
    tool_versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class QuantizedModel:
    """The model file a target wrote, with the facts the manifest needs."""

    format: Literal["tflite", "onnx"]
    path: Path
    precision: Literal["int8", "float16", "float32"]
    method: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    input_quantization: tuple[Quantization | None, ...]
    output_quantization: tuple[Quantization | None, ...]
    calibration_method: str | None = None
    per_channel: bool | None = None
    symmetric_activations: bool | None = None
    float_nodes: tuple[str, ...] = ()
    tool_versions: dict[str, str] = field(default_factory=dict)
    # The same QDQ model with float32 I/O, when ``path`` has integer I/O (per-node error analysis feeds it floats).
    float_io_path: Path | None = None
