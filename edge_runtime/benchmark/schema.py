"""JSON schema of a benchmark run (what `bench --json` writes and `--compare` reads), as pydantic models."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

BENCH_SCHEMA_VERSION = 1
_STRICT = ConfigDict(extra="forbid")


class LatencyStats(BaseModel):
    """Per-inference latency after warm-up, in milliseconds."""

    model_config = _STRICT

    count: int = Field(ge=1, description="Timed inferences.")
    mean_ms: float = Field(description="Mean latency.")
    std_ms: float = Field(description="Standard deviation.")
    min_ms: float = Field(description="Fastest inference.")
    p50_ms: float = Field(description="Median latency.")
    p90_ms: float = Field(description="90th percentile.")
    p99_ms: float = Field(description="99th percentile.")
    max_ms: float = Field(description="Slowest inference.")
    iqr_ms: float = Field(description="Interquartile range (p75 - p25): the spread.")
    mad_ms: float = Field(description="Median absolute deviation from the median.")
    rel_spread: float = Field(description="IQR / p50: spread relative to the median.")


class AccuracyResult(BaseModel):
    """Quality on the validation data: against labels and/or against the baseline variant's outputs."""

    model_config = _STRICT

    samples: int = Field(ge=0, description="Validation samples evaluated.")
    top1_accuracy: float | None = Field(default=None, description="Share of argmax(output 0) equal to the labels.")
    baseline: str | None = Field(default=None, description="Variant id the agreement figures compare against.")
    top1_agreement: float | None = Field(default=None, description="Share of equal argmax with the baseline.")
    cosine_similarity: float | None = Field(default=None, description="Mean cosine similarity with the baseline.")
    max_abs_error: float | None = Field(default=None, description="Largest |output - baseline output|.")
    note: str | None = Field(default=None, description="Why some figures are missing.")


class VariantResult(BaseModel):
    """One model file x backend x thread count."""

    model_config = _STRICT

    id: str = Field(description="Stable key 'model/backend/tN' used by --compare.")
    model: str = Field(description="Model display name (file name, or package name@version).")
    path: str = Field(description="Model file or package path as given.")
    format: str = Field(description="onnx, tflite or unknown.")
    precision: str = Field(description="int8, float32, ... as far as it can be told from the file.")
    backend: str = Field(description="Backend name: onnxruntime, tflite, runtime:onnxruntime, runtime:tflite.")
    threads: int = Field(ge=1, description="Intra-op threads asked of the backend.")
    status: Literal["ok", "skipped"] = Field(description="'skipped' when it could not be measured.")
    reason: str | None = Field(default=None, description="Why it was skipped.")
    file_size_bytes: int | None = Field(default=None, description="Model file size.")
    load_ms: float | None = Field(default=None, description="Time to create the session/interpreter.")
    first_inference_ms: float | None = Field(default=None, description="First (cold) inference, not in stats.")
    latency: LatencyStats | None = Field(default=None, description="Timed latency after warm-up.")
    throughput_ips: float | None = Field(default=None, description="Inferences per second, one stream (1/mean).")
    peak_rss_bytes: int | None = Field(default=None, description="Peak resident memory of the variant's process.")
    round_p50_ms: list[float] = Field(default_factory=list, description="Median latency of each interleaved round.")
    accuracy: AccuracyResult | None = Field(default=None, description="Validation figures, when data was given.")


class RatioResult(BaseModel):
    """A side-by-side comparison: how much faster `variant` is than `baseline`, from interleaved rounds."""

    model_config = _STRICT

    variant: str = Field(description="Variant id.")
    baseline: str = Field(description="Baseline variant id.")
    speedup: float = Field(description="Median over rounds of baseline p50 / variant p50 (>1: variant faster).")
    speedup_q1: float = Field(description="25th percentile of the per-round speedups.")
    speedup_q3: float = Field(description="75th percentile of the per-round speedups.")
    size_ratio: float | None = Field(default=None, description="Variant file size / baseline file size.")


class MachineInfo(BaseModel):
    """What the figures were measured on."""

    model_config = _STRICT

    cpu_model: str = Field(description="CPU model name.")
    arch: str = Field(description="Machine architecture (x86_64, aarch64, ...).")
    logical_cores: int = Field(description="Logical CPUs.")
    physical_cores: int | None = Field(default=None, description="Physical cores, when known.")
    usable_cores: int | None = Field(default=None, description="CPUs this process may run on (affinity).")
    isa_features: list[str] = Field(default_factory=list, description="Relevant ISA flags (avx2, avx512_vnni, ...).")
    governor: str | None = Field(default=None, description="cpufreq scaling governor (None: not exposed).")
    frequency_mhz: float | None = Field(default=None, description="Current CPU frequency.")
    memory_bytes: int | None = Field(default=None, description="Total RAM.")
    system: str = Field(description="OS and kernel.")
    python: str = Field(description="Python version.")
    libraries: dict[str, str] = Field(default_factory=dict, description="Library name -> version.")
    load_average: list[float] = Field(default_factory=list, description="1/5/15-minute load at the start.")

    def describe(self) -> str:
        """One line for terminal output."""
        feats = ",".join(self.isa_features) or "-"
        gov = self.governor or "n/a"
        return (
            f"{self.cpu_model} ({self.arch}, {self.usable_cores or self.logical_cores} usable cores, ISA {feats}, "
            f"governor {gov}, load {'/'.join(f'{x:.1f}' for x in self.load_average)})"
        )


class BenchSettings(BaseModel):
    """How the run was done."""

    model_config = _STRICT

    warmup: int = Field(ge=0, description="Untimed warm-up inferences per variant.")
    runs: int | None = Field(default=None, description="Timed inferences per variant (None: --min-time).")
    min_time_s: float | None = Field(default=None, description="Timed seconds per variant (None: --runs).")
    rounds: int = Field(ge=1, description="Interleaved rounds the timed work is split into.")
    seed: int = Field(description="Seed of the random inputs.")
    validation: str | None = Field(default=None, description="Validation data file.")
    noise_threshold: float = Field(description="Relative spread above which the run is called noisy.")


class BenchReport(BaseModel):
    """Root of the JSON a bench run writes."""

    model_config = _STRICT

    schema_version: int = Field(default=BENCH_SCHEMA_VERSION, description="Bench JSON schema version.")
    created: str = Field(description="ISO-8601 UTC time of the run.")
    reference_name: str | None = Field(default=None, description="Device name when this is a reference file.")
    machine: MachineInfo = Field(description="The machine.")
    settings: BenchSettings = Field(description="The settings.")
    variants: list[VariantResult] = Field(description="Every variant, skipped ones included.")
    ratios: list[RatioResult] = Field(default_factory=list, description="Speedups against the baseline variant.")
    schedule: list[str] = Field(default_factory=list, description="Variant ids in the order rounds ran them.")
    warnings: list[str] = Field(default_factory=list, description="Noise and other warnings.")
    figures: dict[str, float] = Field(default_factory=dict, description="Named headline figures (suite).")

    def variant(self, vid: str) -> VariantResult | None:
        return next((v for v in self.variants if v.id == vid), None)
