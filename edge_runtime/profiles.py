"""Device profiles: what the converter and the runtime need to know to serve one kind of device well.

Profiles are data (YAML files in ``device_profiles/``, or the user's own files); this module only defines their
schema and loads them. A bad profile is reported with its file, the offending key and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import ProfileError, validation_message
from edge_runtime.fsutil import read_yaml

ModelFormat = Literal["tflite", "onnx"]
Precision = Literal["int8", "float16", "float32"]
TensorDtype = Literal["int8", "uint8", "float32"]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class CpuSpec(BaseModel):
    model_config = _STRICT

    arch: Literal["aarch64", "x86_64", "armv7l"] = Field(description="CPU architecture as `uname -m` prints it.")
    cores: int = Field(ge=1, le=256, description="Number of CPU cores the runtime may use.")
    core_type: str = Field(description="CPU core model, e.g. cortex-a72; informative.")
    qemu_cpu: str | None = Field(
        default=None, description="QEMU -cpu name that emulates this core, for the arm64 emulation check."
    )
    features: tuple[str, ...] = Field(
        default=(), description="Instruction-set features, e.g. neon, dotprod, avx512_vnni."
    )


class FormatPolicy(BaseModel):
    model_config = _STRICT

    preferred: ModelFormat = Field(description="Format the converter produces when none is asked for.")
    allowed: tuple[ModelFormat, ...] = Field(description="Formats the device can run.")
    precisions: tuple[Precision, ...] = Field(
        default=("int8",), description="Precisions the device may run; float only where the profile allows it."
    )

    @model_validator(mode="after")
    def _preferred_is_allowed(self) -> FormatPolicy:
        if self.preferred not in self.allowed:
            raise ValueError(f"preferred format {self.preferred!r} is not in allowed {list(self.allowed)}")
        return self


class QuantizationPolicy(BaseModel):
    model_config = _STRICT

    scheme: Literal["full_int8"] = Field(default="full_int8", description="Full-integer int8: weights and activations.")
    per_channel: bool = Field(default=True, description="Per-channel weight scales (else per-tensor).")
    symmetric_activations: bool = Field(
        default=False, description="Symmetric int8 activations (zero point 0), as TensorRT requires."
    )
    input_dtype: TensorDtype = Field(default="int8", description="Model input dtype after quantization.")
    output_dtype: TensorDtype = Field(default="int8", description="Model output dtype after quantization.")
    calibration_method: Literal["minmax", "entropy", "percentile"] = Field(
        default="minmax", description="First calibration method tried; the accuracy guard may try others."
    )
    calibration_samples: int = Field(default=100, ge=1, le=100_000, description="Max calibration samples used.")


class TFLiteSettings(BaseModel):
    model_config = _STRICT

    threads: int = Field(ge=1, le=64, description="Interpreter threads (XNNPACK).")
    xnnpack: bool = Field(default=True, description="Use the XNNPACK delegate (LiteRT's default CPU path).")


class OnnxRuntimeSettings(BaseModel):
    model_config = _STRICT

    threads: int = Field(ge=1, le=64, description="Intra-op threads.")
    execution_providers: tuple[str, ...] = Field(
        default=("CPUExecutionProvider",),
        description="onnxruntime execution providers in fallback order, e.g. TensorRT, CUDA, CPU.",
    )
    graph_optimization: Literal["disable", "basic", "extended", "all"] = Field(
        default="all", description="onnxruntime graph optimisation level."
    )


class BackendSettings(BaseModel):
    model_config = _STRICT

    tflite: TFLiteSettings = Field(description="Settings for the TFLite (LiteRT) backend.")
    onnxruntime: OnnxRuntimeSettings = Field(description="Settings for the onnxruntime backend.")


class Budgets(BaseModel):
    model_config = _STRICT

    latency_ms_p95: float = Field(gt=0, description="Inference latency budget (p95) for the smoke test.")
    min_top1_agreement: float = Field(
        default=0.98, ge=0, le=1, description="Classifiers: minimum int8-vs-float top-1 agreement."
    )
    min_cosine: float = Field(default=0.98, ge=-1, le=1, description="Other models: minimum output cosine similarity.")
    max_accuracy_drop: float = Field(
        default=0.01, ge=0, le=1, description="Labelled validation: largest int8 top-1 accuracy drop (0.01 = 1 pt)."
    )
    memory_mb: int = Field(ge=16, description="Memory the runtime may use, model included.")


class ThermalLimits(BaseModel):
    model_config = _STRICT

    warn_c: float = Field(description="Temperature (Celsius) above which a warning is raised.")
    critical_c: float = Field(description="Temperature (Celsius) at which the device throttles or fails.")

    @model_validator(mode="after")
    def _ordered(self) -> ThermalLimits:
        if self.warn_c >= self.critical_c:
            raise ValueError("warn_c must be below critical_c")
        return self


class DeviceProfile(BaseModel):
    """One kind of device. Loaded from YAML; unknown keys are rejected."""

    model_config = _STRICT

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="Profile name, e.g. raspberry-pi-4.")
    description: str = Field(description="What device this profile is for.")
    cpu: CpuSpec = Field(description="The CPU.")
    accelerator: str | None = Field(default=None, description="GPU/NPU if any, e.g. 'nvidia-maxwell-128'.")
    formats: FormatPolicy = Field(description="Model formats and precisions the device runs.")
    quantization: QuantizationPolicy = Field(description="How to quantize for this device.")
    backends: BackendSettings = Field(description="Backend settings.")
    budgets: Budgets = Field(description="Latency, accuracy and memory budgets.")
    thermal: ThermalLimits = Field(description="Thermal limits.")


def builtin_profile_dir() -> Path:
    """The built-in profiles: inside the installed package (a wheel), else ``device_profiles/`` of the checkout."""
    here = Path(__file__).resolve().parent
    installed = here / "device_profiles"  # setup.py copies the top-level folder here when building a wheel
    return installed if installed.is_dir() else here.parent / "device_profiles"


def _search_dirs() -> list[Path]:
    dirs = []
    extra = os.environ.get("EDGE_RUNTIME_PROFILE_PATH", "")
    dirs.extend(Path(p) for p in extra.split(os.pathsep) if p)
    dirs.append(builtin_profile_dir())
    return dirs


def load_profile_file(path: str | Path) -> DeviceProfile:
    """Load and validate one profile file."""
    path = Path(path)
    data = read_yaml(path, "profile", ProfileError)
    if not isinstance(data, dict):
        raise ProfileError(f"invalid profile {path}: expected a mapping at the top level")
    try:
        return DeviceProfile.model_validate(data)
    except ValidationError as exc:
        raise ProfileError(f"invalid profile {path}: {validation_message(exc, root='(root)')}") from exc


def list_profiles() -> dict[str, Path]:
    """Profile name -> file, user directories first (so a user file can override a built-in one)."""
    found: dict[str, Path] = {}
    for directory in _search_dirs():
        if not directory.is_dir():
            continue
        for f in sorted(directory.glob("*.yaml")):
            found.setdefault(f.stem, f)
    return found


def load_profile(name_or_path: str | Path) -> DeviceProfile:
    """Load a profile by name (``raspberry-pi-4``) or by path to a YAML file."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        return load_profile_file(text)
    profiles = list_profiles()
    if text not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ProfileError(f"unknown profile '{text}' (known: {known})")
    profile = load_profile_file(profiles[text])
    if profile.name != text:
        raise ProfileError(f"invalid profile {profiles[text]}: name: '{profile.name}' does not match file name")
    return profile
