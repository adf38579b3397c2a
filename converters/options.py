"""What to convert and the checked plan for it: the options (the `edge-runtime convert` flags) and ``plan``,
which checks every argument combination against the profile and the file system before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from converters import calibration as cal
from converters.optimize import NEEDS_TORCH, PruneOptions, PruningError
from edge_runtime.errors import ConversionError, PackageError
from edge_runtime.package.manifest import Decoding, InputSpec, StateBinding
from edge_runtime.package.provenance import MlflowSource
from edge_runtime.package.signing import Ed25519PrivateKey, load_private_key
from edge_runtime.profiles import DeviceProfile, load_profile


class ConvertOptions(BaseModel):
    """What to convert, for which device, and how. Mirrors the `edge-runtime convert` flags."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    source: Path = Field(description="Source model: .onnx, .keras/.h5, SavedModel folder, .tflite, .pkl/.joblib, .pt, "
                         "or an MLflow models:/NAME@ALIAS or models:/NAME/VERSION.")
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
    input_shape: tuple[int, ...] | None = Field(default=None, description="First input's shape (dynamic/torch).")
    input_shapes: dict[str, tuple[int, ...]] = Field(default_factory=dict, description="Static shapes by input name.")
    input_kinds: dict[str, Literal["image", "tensor"]] = Field(default_factory=dict, description="Kinds by input.")
    constants: dict[str, tuple[float, ...]] = Field(
        default_factory=dict, description="Constant inputs (e.g. a sample rate), folded into the graph."
    )
    window_hop: int | None = Field(default=None, ge=1, description="Samples between windows, stored in the manifest.")
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
    prune: PruneOptions | None = Field(default=None, description="Channel pruning before conversion (PyTorch).")
    given_files: dict[Literal["sign_key", "passphrase_file", "decoding", "anchors"], Path] = Field(
        default_factory=dict, description="Files options were read from, as given: recorded in the package's "
        "provenance so the conversion can be re-run (converters.recipe)."
    )
    mlflow_uri: str | None = Field(
        default=None, description="MLflow tracking URI for a models:/ source (default: $MLFLOW_TRACKING_URI)."
    )
    mlflow: MlflowSource | None = Field(
        default=None, description="Set by the pipeline when the source was fetched from an MLflow registry."
    )

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
        state = {n for b in self.state for n in (b.input, b.output)}
        for name in self.constants:
            if name in state or name in self.input_shapes:
                raise ValueError(f"--const {name}: the input is also given a state binding or a shape")
        if any(b.input in self.constants for b in self.state):
            raise ValueError("a state input cannot be a constant")
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
    notes: tuple[str, ...] = ()  # choices made for the user, said once at the start (e.g. a format fallback)


def _read_labels(labels: Path | tuple[str, ...] | None) -> tuple[str, ...] | None:
    if labels is None or isinstance(labels, tuple):
        return labels
    try:
        lines = [ln.strip() for ln in Path(labels).read_text().splitlines()]
    except OSError as exc:
        raise ConversionError(f"cannot read labels file {labels}: {exc.strerror}") from exc
    return tuple(ln for ln in lines if ln)


def _unmakeable(fmt: str, src: str, precision: str) -> str | None:
    """Why ``fmt`` cannot be made from a ``src`` source at ``precision`` here (None when it can)."""
    if fmt == "tflite" and src in ("onnx", "sklearn", "torch"):
        return f"a {src} source cannot be converted to TFLite here"
    if fmt == "tflite" and precision != "int8":
        return f"{precision} TFLite targets are not supported"
    return None


def _choose_format(opts: ConvertOptions, profile: DeviceProfile, src: str) -> tuple[Literal["tflite", "onnx"], str]:
    """The target format and, when it is not the profile's preferred one, the line that says why."""
    allowed = profile.formats.allowed
    if opts.format is not None:
        if opts.format not in allowed:
            raise ConversionError(f"profile {profile.name} does not allow format {opts.format} "
                                  f"(allowed: {', '.join(allowed)}): drop --format or pick an allowed one")  # fmt: skip
        why = _unmakeable(opts.format, src, opts.precision)
        if why:
            others = [f for f in allowed if f != opts.format and not _unmakeable(f, src, opts.precision)]
            fix = f"use --format {others[0]}" if others else "no format this profile allows can be made from it"
            raise ConversionError(f"{why}; {fix}")
        return opts.format, ""
    order = [profile.formats.preferred] + [f for f in allowed if f != profile.formats.preferred]
    for fmt in order:
        if _unmakeable(fmt, src, opts.precision) is None:
            if fmt == order[0]:
                return fmt, ""
            why = _unmakeable(order[0], src, opts.precision)
            return fmt, f"profile {profile.name} prefers {order[0]}, but {why}: making {fmt}, which it also allows"
    raise ConversionError(f"{_unmakeable(order[0], src, opts.precision)}, and profile {profile.name} allows only "
                          f"{', '.join(allowed)}: use a profile that allows onnx (--profile)")  # fmt: skip


def plan(opts: ConvertOptions) -> Plan:
    """Check every argument combination against the profile and the file system, with one message each."""
    from converters.sources import detect_format

    profile = opts.profile if isinstance(opts.profile, DeviceProfile) else load_profile(opts.profile)
    if opts.precision not in profile.formats.precisions:
        allowed = ", ".join(profile.formats.precisions)
        raise ConversionError(f"profile {profile.name} does not allow precision {opts.precision} (allowed: {allowed})")
    src = detect_format(Path(opts.source))
    if opts.prune is not None and src != "torch":
        raise PruningError(NEEDS_TORCH.format(fmt=src))
    fmt, note = _choose_format(opts, profile, src)
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
        notes=(note,) if note else (),
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
