"""Monitoring configuration (pydantic, no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)


class DriftConfig(BaseModel):
    """Drift scoring over windows in samples and in time, against a reference (see monitoring.drift).

    At the defaults a sample is taken every 3rd frame, a window holds the last 50 samples (at most 30 s old), a
    verdict comes every 10 samples (or every second), and an alarm needs 2 verdicts in a row: at 30 fps a shift
    is flagged within about 4 s, and the first verdict on a package reference comes after 60 frames."""

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Score drift.")
    reference: Literal["device", "package", "fleet"] = Field(
        default="device", description="What normal is: a baseline learned on the device during a warm-up (fixed "
        "cameras), the package's reference statistics, or a baseline file pushed from the fleet.")
    warmup_s: float = Field(default=60.0, ge=0, description="Device baseline: seconds of live input to learn from.")
    warmup_samples: int = Field(default=200, ge=20, description="Device baseline: samples needed (and at least "
                                "warmup_s seconds).")
    baseline_file: Path | None = Field(
        default=None, description="Where the device baseline is kept across restarts (None: next to the outbox).")
    fleet_baseline: Path | None = Field(default=None, description="The fleet's baseline file (reference: fleet).")
    input_every: int = Field(default=3, ge=1, description="Take a drift sample from every Nth frame (cost).")
    window: int = Field(default=50, ge=10, description="Samples per window.")
    window_s: float = Field(default=30.0, gt=0, description="Samples older than this leave the window.")
    min_samples: int = Field(default=20, ge=5, description="Samples a window needs before a verdict.")
    every_samples: int = Field(default=10, ge=1, description="A verdict after this many new samples ...")
    every_s: float = Field(default=1.0, gt=0, description="... or this many seconds, whichever comes first.")
    family_alpha: float = Field(
        default=0.0027, gt=0, lt=0.5, description="Per-verdict false-alarm level for all features together "
        "(Bonferroni: each of F features is held to family_alpha / F; 0.0027 is 3 sigma for one feature).")
    confirm: int = Field(default=2, ge=1, description="Verdicts in a row needed to raise and to clear an alarm.")
    clear_ratio: float = Field(default=0.5, gt=0, lt=1, description="Hysteresis: an alarm clears below this "
                               "share of the alarm threshold.")
    top_classes: int = Field(default=10, ge=1, description="Most frequent reference classes tracked by class_mix.")

    @model_validator(mode="after")
    def _window(self) -> DriftConfig:
        if self.min_samples > self.window:
            raise ValueError("min_samples cannot exceed window")
        if self.reference == "fleet" and self.fleet_baseline is None:
            raise ValueError("reference 'fleet' needs fleet_baseline (the baseline file the fleet pushed)")
        return self


class SampleConfig(BaseModel):
    """Bounded capture of inputs for re-training."""

    model_config = _STRICT

    directory: Path | None = Field(default=None, description="Where samples are kept; None disables capture.")
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024, description="Size cap; oldest samples deleted first.")
    max_files: int = Field(default=500, ge=1, description="Most samples kept.")
    low_confidence: float | None = Field(default=0.5, ge=0, le=1, description="Keep inputs below this confidence.")
    random_rate: float = Field(default=0.0, ge=0, le=1, description="Also keep this share of inputs at random.")
    min_interval_s: float = Field(default=1.0, ge=0, description="At most one capture per this many seconds.")
    seed: int | None = Field(default=None, description="Seed of the random sampler (tests, reproducibility).")
    upload: bool = Field(default=False, description="Opt-in: samples may leave this device when a signed "
                         "collection policy also allows it (monitoring.collect); default off.")
    redact_commands: tuple[str, ...] = Field(default=(), max_length=32, description="Programs (argv[0], exactly) a "
                                             "signed policy's command redaction may run here; others drop the sample.")


class HealthConfig(BaseModel):
    """Limits behind /health: past a ``*_degraded`` limit the device is degraded, past an ``*_unhealthy`` one it is
    unhealthy (HTTP 503). Each reason is reported with its measured figure and the limit it passed."""

    model_config = _STRICT

    source_stall_degraded_s: float = Field(default=5.0, gt=0, description="No sample from the source for this long.")
    source_stall_unhealthy_s: float = Field(default=15.0, gt=0, description="No sample from the source for this long.")
    error_rate_degraded: float = Field(default=0.05, ge=0, le=1, description="Share of samples the model rejected.")
    error_rate_unhealthy: float = Field(default=0.5, ge=0, le=1, description="Share of samples the model rejected.")
    error_window_s: float = Field(default=60.0, gt=0, description="Seconds over which the error rate is measured.")
    outbox_fill_degraded: float = Field(default=0.8, gt=0, le=1, description="Outbox bytes over its byte bound.")
    outbox_fill_unhealthy: float = Field(default=0.95, gt=0, le=1, description="Outbox bytes over its byte bound.")
    link_down_degraded_s: float = Field(default=300.0, gt=0, description="A configured MQTT link down this long.")
    link_down_unhealthy_s: float | None = Field(
        default=None, gt=0, description="A configured MQTT link down this long (None: never unhealthy for that, "
        "since the outbox keeps records while offline).")

    @model_validator(mode="after")
    def _order(self) -> HealthConfig:
        pairs = (("source_stall", self.source_stall_degraded_s, self.source_stall_unhealthy_s),
                 ("error_rate", self.error_rate_degraded, self.error_rate_unhealthy),
                 ("outbox_fill", self.outbox_fill_degraded, self.outbox_fill_unhealthy),
                 ("link_down", self.link_down_degraded_s, self.link_down_unhealthy_s))
        for name, degraded, unhealthy in pairs:
            if unhealthy is not None and unhealthy < degraded:
                raise ValueError(f"health: the unhealthy limit of {name} is below its degraded limit")
        return self


class FieldConfig(BaseModel):
    """Field accuracy from feedback labels (monitoring.field)."""

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Remember recent predictions and accept labels for them.")
    keep: int = Field(default=10_000, ge=10, le=1_000_000, description="Recent predictions a label can refer to.")
    window: int = Field(default=200, ge=10, description="Labels per accuracy window.")
    min_labels: int = Field(default=50, ge=1, description="Labels a window needs before decay is judged.")
    max_drop: float = Field(default=0.1, gt=0, lt=1, description="Decay: this far below the first full window.")
    min_accuracy: float | None = Field(default=None, ge=0, le=1, description="Decay also below this figure.")
    confirm: int = Field(default=2, ge=1, description="Metric periods in a row to raise or clear a decay.")
    min_iou: float = Field(default=0.5, gt=0, le=1, description="Detection: IoU for a detection to match a box.")


class MonitorConfig(BaseModel):
    model_config = _STRICT

    period_s: float = Field(default=10.0, gt=0, description="Seconds between metric records.")
    frame_order: Literal["BGR", "RGB", "GRAY"] = Field(default="BGR", description="Channel order of frames.")
    system: bool = Field(default=True, description="Include process CPU/RSS, temperatures and throttling.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift scoring.")
    samples: SampleConfig = Field(default_factory=SampleConfig, description="Sample capture.")
    emit_queue: int = Field(default=1000, ge=1, description="Records waiting for the outbox writer thread.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Limits behind /health.")
    field: FieldConfig = Field(default_factory=FieldConfig, description="Field accuracy from feedback labels.")
    latency_budget_ms: float | None = Field(
        default=None, gt=0, description="Centre of the /metrics latency buckets (None: the package profile's p95 "
        "budget, else 50 ms).")
