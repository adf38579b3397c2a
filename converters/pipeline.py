"""The conversion pipeline: source model -> float model -> target (int8 or float) -> guard -> signed package.

``convert(ConvertOptions) -> Package`` is the Python API; ``edge-runtime convert`` is a thin layer over it.
Every argument combination is checked before any model is loaded, and every file is built in a temporary
folder so a failure leaves nothing behind.
"""

from __future__ import annotations

import itertools
import math
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from converters import calibration as cal
from converters import packager
from converters.model import FloatModel
from edge_runtime.errors import ConversionError, PackageError
from edge_runtime.package.manifest import (
    Decoding,
    InputSpec,
    QuantizationInfo,
    SourceInfo,
    StateBinding,
)
from edge_runtime.package.signing import Ed25519PrivateKey, load_private_key
from edge_runtime.package.store import Package
from edge_runtime.profiles import DeviceProfile, load_profile

Progress = Callable[[str], None]


class ConvertOptions(BaseModel):
    """What to convert, for which device, and how. Mirrors the `edge-runtime convert` flags."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    source: Path = Field(description="Source model: .onnx, .keras/.h5, SavedModel folder, .tflite, .pkl/.joblib, .pt.")
    profile: str | DeviceProfile = Field(description="Device profile name, profile YAML path, or a loaded profile.")
    calibration: Path | cal.Dataset = Field(description="Image folder, video, .npy/.npz, or a Dataset (Python API).")
    validation: Path | cal.Dataset | None = Field(
        default=None, description="Held-back data (default: a share of calibration)."
    )
    out: Path = Field(description="Package directory to write.")
    name: str | None = Field(default=None, description="Package name (default: the source file's stem).")
    version: str = Field(default="1.0.0", description="Semantic version of the package.")
    sign_key: Path | Ed25519PrivateKey | None = Field(default=None, description="Ed25519 private key to sign with.")
    format: Literal["tflite", "onnx"] | None = Field(default=None, description="Target format (default: preferred).")
    precision: Literal["int8", "float32", "float16"] = Field(default="int8", description="Target precision.")
    labels: Path | tuple[str, ...] | None = Field(default=None, description="Class labels (file: one per line).")
    task: Literal["classification", "detection", "raw"] | None = Field(default=None, description="Output task.")
    input_kind: Literal["image", "tensor"] | None = Field(default=None, description="Input kind (default: guessed).")
    mean: tuple[float, ...] | None = Field(default=None, description="Normalisation mean (pixel units for images).")
    std: tuple[float, ...] | None = Field(default=None, description="Normalisation std (pixel units for images).")
    color_order: Literal["RGB", "BGR", "GRAY"] | None = Field(default=None, description="Model's colour order.")
    resize: Literal["stretch", "letterbox", "center_crop"] = Field(default="stretch", description="Frame fitting.")
    pad_value: int | None = Field(default=None, ge=0, le=255, description="Letterbox padding pixel (default 114).")
    layout: Literal["NHWC", "NCHW"] | None = Field(default=None, description="Image layout (default: guessed).")
    input_shape: tuple[int, ...] | None = Field(default=None, description="Input shape for dynamic/torch models.")
    calibration_method: Literal["minmax", "entropy", "percentile"] | None = Field(
        default=None, description="First calibration method (default: the profile's)."
    )
    max_samples: int | None = Field(default=None, ge=1, description="Calibration samples (default: profile's).")
    force: bool = Field(default=False, description="Replace an existing output directory.")
    archive: Path | None = Field(default=None, description="Also write the package as this .erpkg archive.")
    input_spec: InputSpec | None = Field(default=None, description="Full float input spec (overrides the flags).")
    decoding: Decoding | None = Field(default=None, description="Output decoding, e.g. SSD for BlazeFace (--decoding).")
    extra_files: dict[str, Path | bytes] = Field(default_factory=dict, description="More package files (anchors).")
    state: tuple[StateBinding, ...] = Field(default=(), description="Stateful streaming bindings.")
    max_float_nodes: int = Field(default=8, ge=0, description="Most nodes the accuracy guard may keep in float.")
    golden_count: int = Field(default=5, ge=1, le=16, description="Golden input/output pairs to store.")
    holdout: float = Field(default=0.2, gt=0, lt=1, description="Share of calibration held back without validation.")

    @model_validator(mode="after")
    def _consistent(self) -> ConvertOptions:
        if self.task == "detection" and self.decoding is None:
            raise ValueError("--task detection needs a detection decoding: give --decoding FILE (SSD or YOLO fields)")
        dec = self.decoding
        if dec is not None and dec.type == "ssd" and dec.anchors_file not in self.extra_files:
            raise ValueError(f"an SSD decoding needs its anchors file {dec.anchors_file} (--anchors FILE.npy)")
        if self.pad_value is not None and self.resize != "letterbox":
            raise ValueError("--pad-value applies to --resize letterbox only")
        if self.decoding is not None and self.task is not None:
            ok = {"classification": ("classification",), "detection": ("ssd", "yolo"), "raw": ("raw",)}[self.task]
            if self.decoding.type not in ok:
                raise ValueError(f"task {self.task} cannot use a {self.decoding.type} decoding")
        if self.input_kind == "tensor" and (self.color_order or self.layout):
            raise ValueError("--color-order and --layout apply to image inputs only")
        if self.precision != "int8" and self.calibration_method is not None:
            raise ValueError(f"--calibration-method applies to int8 only, not {self.precision}")
        return self


@dataclass
class Plan:
    """Checked choices, made before any work."""

    profile: DeviceProfile
    fmt: Literal["tflite", "onnx"]
    method: str
    max_samples: int
    key: Ed25519PrivateKey | None
    labels: tuple[str, ...] | None
    name: str


def _read_labels(labels: Path | tuple[str, ...] | None) -> tuple[str, ...] | None:
    if labels is None or isinstance(labels, tuple):
        return labels
    try:
        lines = [ln.strip() for ln in Path(labels).read_text().splitlines()]
    except OSError as exc:
        raise ConversionError(f"cannot read labels file {labels}: {exc.strerror}") from exc
    return tuple(ln for ln in lines if ln)


def plan(opts: ConvertOptions) -> Plan:
    """Check every argument combination against the profile and the file system, with one message each."""
    from converters.sources import detect_format

    profile = opts.profile if isinstance(opts.profile, DeviceProfile) else load_profile(opts.profile)
    fmt = opts.format or profile.formats.preferred
    if fmt not in profile.formats.allowed:
        raise ConversionError(
            f"profile {profile.name} does not allow format {fmt} (allowed: {', '.join(profile.formats.allowed)})"
        )
    if opts.precision not in profile.formats.precisions:
        allowed = ", ".join(profile.formats.precisions)
        raise ConversionError(f"profile {profile.name} does not allow precision {opts.precision} (allowed: {allowed})")
    src = detect_format(Path(opts.source))
    if fmt == "tflite" and src in ("onnx", "sklearn", "torch"):
        raise ConversionError(f"a {src} source cannot be converted to TFLite here; use --format onnx")
    if fmt == "tflite" and opts.precision != "int8":
        raise ConversionError(f"{opts.precision} TFLite targets are not supported; use --format onnx for float")
    if isinstance(opts.calibration, Path) and not opts.calibration.exists():
        raise ConversionError(f"calibration data {opts.calibration} does not exist")
    if isinstance(opts.validation, Path) and not opts.validation.exists():
        raise ConversionError(f"validation data {opts.validation} does not exist")
    if Path(opts.out).exists() and not opts.force:
        raise PackageError(f"{opts.out} already exists (use --force to replace it)")
    key = load_private_key(opts.sign_key) if isinstance(opts.sign_key, Path) else opts.sign_key
    name = opts.name or Path(opts.source).stem.replace(" ", "_")
    return Plan(
        profile=profile,
        fmt=fmt,
        method=_first_method(opts, profile, fmt),
        max_samples=opts.max_samples or profile.quantization.calibration_samples,
        key=key,
        labels=_read_labels(opts.labels),
        name=name,
    )


def _first_method(opts: ConvertOptions, profile: DeviceProfile, fmt: str) -> str:
    """The first calibration method: the flag's, else the profile's, else (TFLite, which calibrates with minmax
    only, under a profile asking for another) minmax; the guard records the methods it skipped."""
    from converters.targets.tflite_int8 import SUPPORTED_METHODS

    method = opts.calibration_method or profile.quantization.calibration_method
    if fmt != "tflite" or opts.precision != "int8" or method in SUPPORTED_METHODS:
        return method
    if opts.calibration_method is not None:
        raise ConversionError(
            f"the TFLite int8 target calibrates with {', '.join(SUPPORTED_METHODS)} only; "
            f"--calibration-method {method} needs --format onnx"
        )
    return SUPPORTED_METHODS[0]


def _stderr(msg: str) -> None:
    print(f"convert: {msg}", file=sys.stderr, flush=True)


def convert(opts: ConvertOptions, progress: Progress | None = None) -> Package:
    """Convert ``opts.source`` into a package at ``opts.out``; see the module docstring."""
    say = progress or _stderr
    p = plan(opts)
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        return run_stages(opts, p, Path(tmp), say)


def open_data(opts: ConvertOptions, p: Plan, names: list[str]) -> tuple[cal.Subset, cal.Subset, cal.Dataset]:
    """Calibration and held-back subsets (a share of calibration when no validation data is given)."""

    def dataset(d: Path | cal.Dataset, count: int) -> cal.Dataset:
        return d if isinstance(d, cal.Dataset) else cal.open_dataset(d, names, count)

    if opts.validation is None:
        data = dataset(opts.calibration, math.ceil(p.max_samples / (1 - opts.holdout)))
        if len(data) < 2:
            raise ConversionError(f"{data.description}: need at least 2 samples to hold some back for validation")
        calib = cal.Subset(data, "calibration", p.max_samples, opts.holdout)
        valid = cal.Subset(data, "validation", p.max_samples, opts.holdout)
        return calib, valid, data
    data = dataset(opts.calibration, p.max_samples)
    return cal.Subset(data, "all", p.max_samples), cal.Subset(dataset(opts.validation, p.max_samples)), data


def _guess_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and (shape[-1] in (1, 3) or shape[1] in (1, 3))


def input_specs(fm: FloatModel, opts: ConvertOptions) -> list[InputSpec]:
    """The float model's input specs: how raw data becomes each input (float32, same normalisation as int8)."""
    if opts.input_spec is not None:
        if len(fm.inputs) != 1 or opts.input_spec.name != fm.inputs[0].name:
            raise ConversionError(
                f"input_spec names {opts.input_spec.name!r}; the model's inputs are {[i.name for i in fm.inputs]}"
            )
        return [opts.input_spec]
    specs = []
    for t in fm.inputs:
        kind = opts.input_kind or ("image" if _guess_image(t.shape) and len(fm.inputs) == 1 else "tensor")
        if t.dtype not in ("float32", "float16", "float64"):
            raise ConversionError(f"input {t.name!r} has dtype {t.dtype}; only float inputs can be calibrated")
        fields: dict = {"name": t.name, "shape": t.shape, "dtype": "float32", "kind": kind}
        if kind == "image":
            if len(t.shape) != 4 or min(t.shape[1:]) < 1:
                raise ConversionError(
                    f"image input {t.name!r} needs a fixed 4-D shape, has {list(t.shape)}: give --input-shape"
                )
            layout = opts.layout or ("NCHW" if t.shape[1] in (1, 3) and t.shape[3] not in (1, 3) else "NHWC")
            channels = t.shape[1] if layout == "NCHW" else t.shape[3]
            fields.update(
                layout=layout, resize=opts.resize, color_order=opts.color_order or ("GRAY" if channels == 1 else "RGB")
            )
            if opts.pad_value is not None:
                fields["pad_value"] = opts.pad_value
            norm = {"mean": opts.mean or (0.0,), "std": opts.std or (255.0,)}
        else:
            norm = {"mean": opts.mean or (0.0,), "std": opts.std or (1.0,)}
        try:
            specs.append(InputSpec(**fields, normalization=norm))
        except ValueError as exc:
            raise ConversionError(f"input {t.name!r}: {str(exc).splitlines()[-1].strip()}") from exc
    return specs


class Context:
    """State shared by the stages of one conversion."""

    def __init__(self, opts: ConvertOptions, p: Plan, work: Path, say: Progress) -> None:
        from converters.sources import load_source

        self.opts, self.plan, self.work, self.say = opts, p, work, say
        say(f"loading {opts.source}")
        self.fm = load_source(Path(opts.source), work, opts.input_shape)
        if opts.decoding is not None and opts.decoding.type in ("ssd", "yolo"):
            from converters.decoding_file import check_against_model

            anchors = opts.extra_files.get(opts.decoding.anchors_file) if opts.decoding.type == "ssd" else None
            check_against_model(opts.decoding, self.fm.outputs, anchors)
        self.fspecs = input_specs(self.fm, opts)
        self.calib, self.valid, data = open_data(opts, p, [s.name for s in self.fspecs])
        self.data = data
        self.fbuild = cal.InputBuilder(self.fspecs, data.frame_order, data.description)
        self.vbuild = cal.InputBuilder(self.fspecs, self.valid.dataset.frame_order, self.valid.dataset.description)
        say(f"reading calibration data: {len(self.calib)} samples from {data.description}")
        self.fingerprint, self.n_calib = cal.fingerprint_and_count(self.fbuild.over(self.calib))
        say(f"reading held-back data: {len(self.valid)} samples from {self.valid.dataset.description}")
        cal.fingerprint_and_count(self.vbuild.over(self.valid))
        self.float_run: Callable[[list[np.ndarray]], list[np.ndarray]] | None = None
        self.class_idx: int | None = None
        self.activation = "none"

    def calibration(self) -> Iterator[list[np.ndarray]]:
        return self.fbuild.over(self.calib)

    def decide_outputs(self) -> None:
        """Which output holds class scores (if any) and whether they still need a softmax."""
        assert self.float_run is not None
        self.class_idx = packager.class_output(self.fm.outputs, self.opts.task, self.opts.decoding, self.plan.labels)
        if self.class_idx is not None:
            classes = self.fm.outputs[self.class_idx].shape[-1]
            if self.plan.labels is not None and classes > 0 and len(self.plan.labels) != classes:
                raise ConversionError(f"{len(self.plan.labels)} labels given but the model scores {classes} classes")
            sample = [self.float_run(b)[self.class_idx] for b in itertools.islice(self.calibration(), 8)]
            self.activation = packager.score_activation(sample)


def run_stages(opts: ConvertOptions, p: Plan, work: Path, say: Progress) -> Package:
    """Load and check data, build the target, then gather the manifest's parts and write the package."""
    from converters.build import build_target, packaged_specs

    ctx = Context(opts, p, work, say)
    built = build_target(ctx)
    qm = built.model
    say("computing reference statistics and golden pairs")
    pspecs = packaged_specs(ctx.fspecs, qm)
    out_spec = packager.output_spec(qm, ctx.class_idx, p.labels, ctx.activation, opts.decoding, opts.task)
    ref = packager.reference_stats(
        ctx.fspecs[0], ctx.data.frame_order, ctx.calib, ctx.fbuild, built.float_run, ctx.class_idx, ctx.activation
    )
    qbuild = cal.InputBuilder(pspecs, ctx.vbuild.frame_order, ctx.vbuild.source)
    golden = packager.golden_pairs(qm, qbuild, ctx.valid, opts.golden_count)
    tools = {**ctx.fm.tool_versions, **qm.tool_versions, "edge-runtime": _own_version()}
    quant = QuantizationInfo(
        precision=qm.precision,
        method=qm.method,
        calibration_method=qm.calibration_method,
        calibration_samples=ctx.n_calib if qm.precision == "int8" else 0,
        calibration_fingerprint=ctx.fingerprint if qm.precision == "int8" else None,
        per_channel=qm.per_channel,
        symmetric_activations=qm.symmetric_activations,
        float_nodes=qm.float_nodes,
        remedies=tuple(built.remedies),
    )
    parts = packager.PackageParts(
        name=p.name,
        version=opts.version,
        profile=p.profile.name,
        model=qm,
        inputs=pspecs,
        outputs=out_spec,
        quantization=quant,
        accuracy=built.accuracy,
        reference=ref,
        golden=golden,
        golden_atols=packager.golden_atols(qm, golden),
        source=SourceInfo(format=ctx.fm.source_format, filename=Path(opts.source).name, sha256=ctx.fm.source_sha256),
        tools=tools,
        extra_files=opts.extra_files,
        state=opts.state,
    )
    say(f"writing package {opts.out}")
    return packager.write(parts, Path(opts.out), p.key, opts.force, opts.archive)


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-runtime")
    except PackageNotFoundError:
        return "dev"
