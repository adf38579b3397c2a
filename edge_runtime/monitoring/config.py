"""Monitoring configuration (pydantic, no I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_STRICT = ConfigDict(extra="forbid", frozen=True)


class DriftConfig(BaseModel):
    """Sliding-window drift scoring against the package's reference statistics."""

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Score drift when the package has reference statistics.")
    window: int = Field(default=500, ge=20, description="Recent samples per feature compared with the reference.")
    min_samples: int = Field(default=100, ge=10, description="Samples needed in the window before scoring.")
    every_n_frames: int = Field(default=50, ge=1, description="Score drift every N frames (keeps per-frame cost O(1)).")
    input_every: int = Field(default=4, ge=1, description="Take input statistics from every Nth frame (cost).")
    input_stride: int = Field(default=8, ge=1, description="Pixel stride for input statistics (subsampling).")
    psi_threshold: float = Field(default=0.25, gt=0, description="PSI above this is drift (0.1 small, 0.25 major).")
    ks_alpha: float = Field(default=0.001, gt=0, lt=1, description="Significance level of the two-sample KS test.")
    channel_shift_threshold: float = Field(
        default=0.5, gt=0, description="Window channel mean this many reference stds away is drift."
    )
    require: Literal["any", "all"] = Field(
        default="all", description="Drift when 'all' scored tests of a feature cross, or 'any' one of them."
    )

    @model_validator(mode="after")
    def _window(self) -> DriftConfig:
        if self.min_samples > self.window:
            raise ValueError("min_samples cannot exceed window")
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


class MonitorConfig(BaseModel):
    model_config = _STRICT

    period_s: float = Field(default=10.0, gt=0, description="Seconds between metric records.")
    frame_order: Literal["BGR", "RGB", "GRAY"] = Field(default="BGR", description="Channel order of frames.")
    system: bool = Field(default=True, description="Include process CPU/RSS, temperatures and throttling.")
    drift: DriftConfig = Field(default_factory=DriftConfig, description="Drift scoring.")
    samples: SampleConfig = Field(default_factory=SampleConfig, description="Sample capture.")
    emit_queue: int = Field(default=1000, ge=1, description="Records waiting for the outbox writer thread.")
    health: HealthConfig = Field(default_factory=HealthConfig, description="Limits behind /health.")
    latency_budget_ms: float | None = Field(
        default=None, gt=0, description="Centre of the /metrics latency buckets (None: the package profile's p95 "
        "budget, else 50 ms).")
