"""The model package manifest: what a package promises about its files, inputs, outputs and quality.

The converter writes it, the runtime, the monitoring and the updater read it. It is versioned by
``schema_version``; a reader refuses a major version it does not know. Config models do no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_runtime.package.optimization import PruningInfo, SelectionInfo
from edge_runtime.package.provenance import Provenance

SCHEMA_VERSION = 1
# Blocks a device never acts on (it only carries them). A writer lists the ones it wrote in ``optional_blocks``, so
# a runtime from before a block existed ignores that block instead of refusing the package; any other unknown key
# is still refused.
INFORMATIONAL_BLOCKS = ("pruning", "selection", "provenance")
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.json"

Dtype = Literal["float32", "float16", "int8", "uint8", "int32", "int64", "bool"]
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_STRICT = ConfigDict(extra="forbid", frozen=True)


def parse_semver(version: str) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
    """Sort key for a semantic version (a release sorts after its pre-releases)."""
    m = _SEMVER.match(version)
    if not m:
        raise ValueError(f"not a semantic version: {version!r}")
    pre: tuple[tuple[int, int | str], ...]
    if m.group(4) is None:
        pre = ((2, 0),)
    else:
        pre = tuple((0, int(p)) if p.isdigit() else (1, p) for p in m.group(4).split("."))
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), pre


class FileEntry(BaseModel):
    model_config = _STRICT

    path: str = Field(description="Path relative to the package root, '/'-separated.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256 of the file's bytes.")
    size: int = Field(ge=0, description="File size in bytes.")

    @field_validator("path")
    @classmethod
    def _safe_path(cls, v: str) -> str:
        parts = v.split("/")
        if v.startswith("/") or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"unsafe package path {v!r}")
        return v


class Quantization(BaseModel):
    """Affine quantization of one tensor: real = scale * (q - zero_point)."""

    model_config = _STRICT

    scale: tuple[float, ...] = Field(min_length=1, description="One scale (per-tensor) or one per channel.")
    zero_point: tuple[int, ...] = Field(min_length=1, description="Zero point(s), same length as scale.")
    axis: int | None = Field(default=None, description="Channel axis for per-channel parameters.")

    @model_validator(mode="after")
    def _lengths(self) -> Quantization:
        if len(self.scale) != len(self.zero_point):
            raise ValueError("scale and zero_point must have the same length")
        if any(s <= 0 for s in self.scale):
            raise ValueError("quantization scale must be positive")
        return self


class TensorSpec(BaseModel):
    model_config = _STRICT

    name: str = Field(description="Tensor name in the model file.")
    shape: tuple[int, ...] = Field(description="Shape; -1 marks a dynamic dimension.")
    dtype: Dtype = Field(description="Element type the model takes or returns.")
    quantization: Quantization | None = Field(default=None, description="Set for int8/uint8 tensors.")


class Normalization(BaseModel):
    """model_input = (pixel - mean) / std, with pixels in 0..255, per channel in the model's colour order."""

    model_config = _STRICT

    mean: tuple[float, ...] = Field(default=(0.0,), description="Per-channel (or one shared) mean, pixel units.")
    std: tuple[float, ...] = Field(default=(255.0,), description="Per-channel (or one shared) std, pixel units.")

    @field_validator("std")
    @classmethod
    def _nonzero(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(s == 0 for s in v):
            raise ValueError("std must be non-zero")
        return v


class InputSpec(TensorSpec):
    """How raw data becomes this input. One implementation (edge_runtime.preprocess) reads it everywhere."""

    kind: Literal["image", "tensor"] = Field(description="'image': frames; 'tensor': arrays or sensor windows.")
    layout: Literal["NHWC", "NCHW"] | None = Field(default=None, description="Image layout (images only).")
    color_order: Literal["RGB", "BGR", "GRAY"] | None = Field(default=None, description="Channel order (images).")
    resize: Literal["stretch", "letterbox", "center_crop"] = Field(
        default="stretch", description="How a frame of another size is fitted to the input."
    )
    pad_value: int = Field(default=114, ge=0, le=255, description="Letterbox padding pixel value.")
    normalization: Normalization = Field(default_factory=Normalization, description="Pixel normalisation.")
    window_hop: int | None = Field(
        default=None, ge=1, description="Tensor inputs fed from a sample stream: samples between windows (default: "
        "the window size, no overlap); `run --window-hop` overrides it."
    )

    @model_validator(mode="after")
    def _image_fields(self) -> InputSpec:
        if self.window_hop is not None and self.kind != "tensor":
            raise ValueError("window_hop applies to tensor inputs only")
        if self.kind == "image":
            if self.layout is None or self.color_order is None:
                raise ValueError("image inputs need layout and color_order")
            if len(self.shape) != 4:
                raise ValueError("image inputs need a 4-D shape (batch first)")
        if self.dtype in ("int8", "uint8") and self.quantization is None:
            raise ValueError(f"{self.dtype} input needs quantization parameters")
        return self

    @property
    def height_width_channels(self) -> tuple[int, int, int]:
        """(H, W, C) of an image input, whatever the layout."""
        if self.layout == "NCHW":
            _, c, h, w = self.shape
        else:
            _, h, w, c = self.shape
        return h, w, c


class SsdDecoding(BaseModel):
    """Anchor-based SSD detection (BlazeFace style): boxes are offsets from anchors in anchors.npy."""

    model_config = _STRICT

    type: Literal["ssd"] = "ssd"
    anchors_file: str = Field(description="Package file (.npy, float32 [N,4] cx,cy,w,h normalised) of anchors.")
    boxes_output: str = Field(description="Name of the raw box-regression output.")
    scores_output: str = Field(description="Name of the raw score output.")
    scale: tuple[float, float, float, float] = Field(description="x, y, w, h scale dividing the regressions.")
    num_keypoints: int = Field(default=0, ge=0, description="Keypoints (x,y pairs) after the 4 box values.")
    score_activation: Literal["sigmoid", "none"] = Field(default="sigmoid", description="Applied to raw scores.")
    score_clip: float | None = Field(default=100.0, description="Clip raw scores to +-this before sigmoid.")
    score_threshold: float = Field(default=0.5, ge=0, le=1, description="Minimum detection score.")
    iou_threshold: float = Field(default=0.3, ge=0, le=1, description="NMS IoU threshold.")
    max_detections: int = Field(default=100, ge=1, description="Maximum detections kept after NMS.")
    nms: Literal["plain", "weighted"] = Field(
        default="plain", description="'weighted': overlapping boxes are score-averaged (MediaPipe BlazeFace)."
    )


class YoloDecoding(BaseModel):
    """YOLO-style detection: one output [1, 4+C, N] (v8) or [1, N, 5+C] (v5), boxes cx,cy,w,h in input pixels."""

    model_config = _STRICT

    type: Literal["yolo"] = "yolo"
    variant: Literal["v5", "v8"] = Field(description="v5: objectness + class scores; v8: class scores only.")
    output: str = Field(description="Name of the prediction output.")
    score_threshold: float = Field(default=0.25, ge=0, le=1, description="Minimum detection score.")
    iou_threshold: float = Field(default=0.45, ge=0, le=1, description="NMS IoU threshold.")
    max_detections: int = Field(default=100, ge=1, description="Maximum detections kept after NMS.")


class ClassificationDecoding(BaseModel):
    model_config = _STRICT

    type: Literal["classification"] = "classification"
    output: str = Field(description="Name of the scores output.")
    activation: Literal["softmax", "sigmoid", "none"] = Field(
        default="none", description="Applied to the output to get probabilities ('none': already probabilities)."
    )
    top_k: int = Field(default=5, ge=1, description="Classes returned per prediction.")


class RawDecoding(BaseModel):
    model_config = _STRICT

    type: Literal["raw"] = "raw"


Decoding = Annotated[
    ClassificationDecoding | SsdDecoding | YoloDecoding | RawDecoding, Field(discriminator="type")
]


class StateBinding(BaseModel):
    """A stateful streaming model: `output` is fed back into `input` on the next call."""

    model_config = _STRICT

    input: str = Field(description="State input tensor name.")
    output: str = Field(description="State output tensor name fed back on the next call.")


class OutputSpec(BaseModel):
    model_config = _STRICT

    task: Literal["classification", "detection", "raw"] = Field(description="What the outputs mean.")
    tensors: tuple[TensorSpec, ...] = Field(min_length=1, description="Model outputs, in model order.")
    labels: tuple[str, ...] | None = Field(default=None, description="Class labels, index order.")
    decoding: Decoding = Field(default_factory=RawDecoding, description="How to turn outputs into results.")

    @model_validator(mode="after")
    def _task_matches_decoding(self) -> OutputSpec:
        expected = {"classification": ("classification",), "detection": ("ssd", "yolo"), "raw": ("raw",)}
        if self.decoding.type not in expected[self.task]:
            raise ValueError(f"task {self.task!r} cannot use decoding {self.decoding.type!r}")
        return self


class QuantizationInfo(BaseModel):
    model_config = _STRICT

    precision: Literal["int8", "float16", "float32"] = Field(description="Precision of the packaged model.")
    method: str = Field(description="How it was quantized, e.g. 'tflite-ptq-full-int8', 'ort-static-qdq'.")
    calibration_method: str | None = Field(default=None, description="minmax, entropy or percentile.")
    calibration_samples: int = Field(default=0, ge=0, description="Number of calibration samples used.")
    calibration_fingerprint: str | None = Field(default=None, description="SHA-256 over the calibration tensors.")
    per_channel: bool | None = Field(default=None, description="Per-channel weight quantization.")
    symmetric_activations: bool | None = Field(default=None, description="Activations with zero point 0.")
    float_nodes: tuple[str, ...] = Field(default=(), description="Nodes or ops left in float.")
    remedies: tuple[str, ...] = Field(default=(), description="What the accuracy guard did to meet the budget.")


class AccuracyReport(BaseModel):
    model_config = _STRICT

    samples: int = Field(ge=0, description="Held-back samples compared.")
    top1_agreement: float | None = Field(default=None, description="Classifiers: share of equal top-1 classes.")
    cosine_similarity: float | None = Field(default=None, description="Mean cosine similarity of outputs.")
    max_abs_error: float | None = Field(default=None, description="Largest absolute output difference.")
    budget: dict[str, float] = Field(default_factory=dict, description="The budget the report was checked against.")
    passed: bool = Field(description="Whether the budget was met.")
    decision: Literal["pass", "fail", "undecided"] | None = Field(
        default=None, description="The guard's decision; 'undecided': too few samples, accepted on output agreement."
    )
    reason: str | None = Field(default=None, description="What the decision rests on, in one line.")
    samples_needed: int | None = Field(default=None, ge=1, description="Held-back samples that would settle it.")
    weighted_flips: float | None = Field(default=None, ge=0, description="Top-1 flips weighted by float margin.")
    labelled_samples: int = Field(default=0, ge=0, description="Held-back samples that carry a class label.")
    float_accuracy: float | None = Field(default=None, description="Labelled data: float model top-1 accuracy.")
    int8_accuracy: float | None = Field(default=None, description="Labelled data: packaged model top-1 accuracy.")
    float_accuracy_ci: tuple[float, float] | None = Field(default=None, description="95% Wilson interval.")
    int8_accuracy_ci: tuple[float, float] | None = Field(default=None, description="95% Wilson interval.")


class Histogram(BaseModel):
    model_config = _STRICT

    edges: tuple[float, ...] = Field(min_length=2, description="Bin edges (len = counts + 1).")
    counts: tuple[float, ...] = Field(min_length=1, description="Counts (or proportions) per bin.")

    @model_validator(mode="after")
    def _lengths(self) -> Histogram:
        if len(self.edges) != len(self.counts) + 1:
            raise ValueError("a histogram needs len(edges) == len(counts) + 1")
        return self


class ReferenceStats(BaseModel):
    """Statistics of calibration inputs and of the model's outputs on them: the drift baseline."""

    model_config = _STRICT

    samples: int = Field(ge=0, description="Samples the statistics were computed on.")
    channel_mean: tuple[float, ...] = Field(default=(), description="Per-channel mean of raw pixels/values.")
    channel_std: tuple[float, ...] = Field(default=(), description="Per-channel std of raw pixels/values.")
    brightness: Histogram | None = Field(default=None, description="Histogram of per-sample mean brightness.")
    input_values: Histogram | None = Field(default=None, description="Histogram of raw input values (tensors).")
    class_histogram: tuple[float, ...] | None = Field(default=None, description="Top-1 class proportions.")
    confidence: Histogram | None = Field(default=None, description="Histogram of top score per sample.")
    output_mean: tuple[float, ...] = Field(default=(), description="Mean of each output tensor.")
    output_std: tuple[float, ...] = Field(default=(), description="Std of each output tensor.")


class GoldenSet(BaseModel):
    """Golden input/output pairs the device uses to smoke-test a model before trusting it."""

    model_config = _STRICT

    file: str = Field(description="Package .npz file: input_<i>_<k> and output_<i>_<k> arrays.")
    count: int = Field(ge=1, description="Number of pairs.")
    atol: float = Field(ge=0, description="Absolute tolerance on dequantized outputs.")
    atol_per_output: tuple[Annotated[float, Field(ge=0)], ...] | None = Field(
        default=None,
        description="Absolute tolerance per output tensor, in model order (overrides atol where given): outputs "
        "on different scales, e.g. box offsets in pixels and scores, each get their own.",
    )
    top1_must_match: bool = Field(default=False, description="Classifiers: top-1 must match exactly.")


class SourceInfo(BaseModel):
    model_config = _STRICT

    format: str = Field(description="Source format: onnx, keras, savedmodel, tflite, sklearn, torch.")
    filename: str = Field(description="Source file or folder name.")
    sha256: str = Field(description="SHA-256 of the source model file (or of its folder's files).")


class Manifest(BaseModel):
    """Root of ``manifest.json``."""

    model_config = _STRICT

    schema_version: int = Field(default=SCHEMA_VERSION, description="Manifest schema version.")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Model name.")
    version: str = Field(description="Semantic version of this package.")
    created: str = Field(description="ISO-8601 UTC time the package was written.")
    format: Literal["tflite", "onnx"] = Field(description="Model file format.")
    profile: str = Field(description="Device profile the package was built for.")
    model_file: str = Field(description="The model file, relative to the package root.")
    files: tuple[FileEntry, ...] = Field(min_length=1, description="Every file in the package except manifest/sig.")
    inputs: tuple[InputSpec, ...] = Field(min_length=1, description="Model inputs, in model order.")
    outputs: OutputSpec = Field(description="Model outputs and how to decode them.")
    state: tuple[StateBinding, ...] = Field(default=(), description="Stateful streaming bindings.")
    quantization: QuantizationInfo = Field(description="How the model was quantized.")
    accuracy: AccuracyReport | None = Field(default=None, description="int8 vs float on held-back data.")
    reference: ReferenceStats | None = Field(default=None, description="Drift baseline.")
    golden: GoldenSet | None = Field(default=None, description="Golden smoke-test pairs.")
    source: SourceInfo | None = Field(default=None, description="Where the model came from.")
    tools: dict[str, str] = Field(default_factory=dict, description="Tool name -> version used to build.")
    rollback: bool = Field(default=False, description="An explicit, signed rollback to an older version.")
    pruning: PruningInfo | None = Field(default=None, description="Channel pruning done before conversion.")
    selection: SelectionInfo | None = Field(default=None, description="Why `bench --choose` picked this package.")
    provenance: Provenance | None = Field(default=None, description="The recorded convert recipe and its inputs.")
    optional_blocks: tuple[str, ...] = Field(
        default=(), max_length=32,
        description="Top-level blocks a reader that does not know them may ignore (informational ones such as "
                    "provenance); any other unknown key is refused.")

    @model_validator(mode="before")
    @classmethod
    def _ignore_unknown_optional_blocks(cls, data: object) -> object:
        """Drop the unknown keys the writer declared optional (a newer converter's informational blocks)."""
        if not isinstance(data, dict) or not isinstance(data.get("optional_blocks"), (list, tuple)):
            return data
        declared = {n for n in data["optional_blocks"] if isinstance(n, str)}
        unknown = {k for k in data if k in declared and k not in cls.model_fields}
        return {k: v for k, v in data.items() if k not in unknown} if unknown else data

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"unsupported manifest schema_version {v} (this runtime reads {SCHEMA_VERSION})")
        return v

    @field_validator("version")
    @classmethod
    def _semver(cls, v: str) -> str:
        parse_semver(v)
        return v

    @model_validator(mode="after")
    def _files_consistent(self) -> Manifest:
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("duplicate paths in files")
        referenced = [self.model_file]
        if self.golden:
            referenced.append(self.golden.file)
        if isinstance(self.outputs.decoding, SsdDecoding):
            referenced.append(self.outputs.decoding.anchors_file)
        for ref in referenced:
            if ref not in paths:
                raise ValueError(f"{ref!r} is referenced but not listed in files")
        if {MANIFEST_NAME, SIGNATURE_NAME} & set(paths):
            raise ValueError("files must not list the manifest or the signature")
        per_output = self.golden.atol_per_output if self.golden else None
        if per_output is not None and len(per_output) != len(self.outputs.tensors):
            raise ValueError(
                f"golden.atol_per_output has {len(per_output)} values for {len(self.outputs.tensors)} outputs"
            )
        return self

    def file_entry(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    @property
    def version_key(self) -> tuple[int, int, int, tuple[tuple[int, int | str], ...]]:
        return parse_semver(self.version)
