"""Settings of the device-side update agent (pydantic, no I/O)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge_runtime.package.signing import TrustConfig, check_trust_fields
from edge_runtime.sync.topics import check_segment
from edge_runtime.update.health import HealthSettings
from edge_runtime.update.states import State
from edge_runtime.update.transfer import TransferSettings


class UpdateSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(description="This device's id (a topic level).")
    groups: tuple[str, ...] = Field(default=(), description="Fleet groups whose desired documents apply here.")
    profile: str = Field(description="Device profile name; packages for another profile are refused.")
    state_dir: Path = Field(description="Where slots, downloads and the update state file live.")
    trusted_keys: tuple[Path, ...] = Field(
        default=(), description="Legacy: Ed25519 public keys (.pub) or folders, each trusted for both roles."
    )
    trust: TrustConfig | None = Field(default=None, description="Release and operator keys (replaces trusted_keys).")
    pin_version: str | None = Field(default=None, description="Follow only this version (None: follow latest).")
    keep_versions: int = Field(default=3, ge=2, le=20, description="Installed versions kept for local rollback.")
    max_disk_mb: float | None = Field(default=None, gt=0, description="Disk budget for installed versions.")
    max_retries: int = Field(default=3, ge=0, le=20, description="Retries of one failing step.")
    max_recoveries: int = Field(default=3, ge=0, le=20, description="Restarts tolerated mid-update before giving up.")
    smoke_budget_ms: float | None = Field(default=None, gt=0, description="Smoke-test p95 budget (profile's if None).")
    shadow_s: float = Field(default=0.0, ge=0, description="Shadow-run the new model this long (0: no shadow).")
    min_agreement: float = Field(default=0.9, ge=0, le=1, description="Shadow agreement needed to go on.")
    live_report_s: float = Field(
        default=10.0, ge=0, description="Publish live error/latency statistics this often (0: never)."
    )
    allow_http: bool = Field(default=True, description="Use the document's HTTP(S) URL when it has one.")
    http_token_file: Path | None = Field(default=None, description="File (mode 0600) holding this device's "
                                         "package-download token (edge-runtime fleet device-token).")
    allow_plain_http: bool = Field(default=False, description="Allow http:// package URLs to a non-loopback host "
                                   "(the token and the package travel unencrypted).")
    transfer: TransferSettings = Field(default_factory=TransferSettings, description="Chunked transfer settings.")
    health: HealthSettings = Field(default_factory=HealthSettings, description="Health window after the swap.")
    dwell_s: dict[State, float] = Field(
        default_factory=dict, description="Extra seconds spent in a state (fault-injection tests and demos only)."
    )

    @model_validator(mode="after")
    def _trust(self) -> UpdateSettings:
        check_trust_fields(self.trust, self.trusted_keys)
        return self

    @field_validator("device_id")
    @classmethod
    def _id(cls, v: str) -> str:
        return check_segment(v, "device id")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_segment(g, "group") for g in v)
