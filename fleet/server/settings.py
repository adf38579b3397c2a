"""The fleet server's configuration: validated, no I/O."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from fleet.server.ingest import IngestConfig


class Retention(BaseModel):
    """How long each table keeps rows, and the byte bound on raw metrics (oldest go first)."""

    model_config = ConfigDict(extra="forbid")

    raw_days: float = Field(default=7, gt=0, description="Raw metric records.")
    rollup_1m_days: float = Field(default=30, gt=0, description="1-minute rollups.")
    rollup_1h_days: float = Field(default=400, gt=0, description="1-hour rollups.")
    events_days: float = Field(default=90, gt=0, description="Events (drift, errors, ...).")
    rejected_days: float = Field(default=7, gt=0, description="Payloads refused by validation.")
    raw_max_rows: int = Field(default=20_000_000, ge=1000, description="Raw metric rows kept at most.")
    rejected_max_rows: int = Field(default=10_000, ge=100, description="Refused payloads kept at most (64 KiB "
                                   "each at most), the newest.")
    interval_s: float = Field(default=60, gt=0, description="How often rollups and retention run.")


class ServerSettings(BaseModel):
    """Everything `fleet serve` needs besides the broker connection."""

    model_config = ConfigDict(extra="forbid")

    db_url: str | None = Field(default=None, description="SQLAlchemy URL; default SQLite under data_dir.")
    data_dir: Path = Field(description="Sample store and the embedded database live here.")
    host: str = Field(default="127.0.0.1", description="HTTP listen address.")
    port: int = Field(default=8700, ge=0, le=65535, description="HTTP port (0: any free port).")
    operator_key: Path | None = Field(default=None, description="Ed25519 private key that signs commands and "
                                      "desired documents; without it every action is refused.")
    public_url: str | None = Field(default=None, pattern=r"^https?://[^/?#\s]+(/[^?#\s]*)?$",
                                   description="The server's URL as devices reach it: desired documents then carry "
                                   "the package's HTTP(S) URL under it (none: devices download over MQTT only).")
    secure_cookies: bool = Field(default=False, description="Mark session cookies Secure (behind HTTPS).")
    sample_max_bytes: int = Field(default=1 << 30, ge=1 << 20, description="Bound on the sample store.")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    retention: Retention = Field(default_factory=Retention)

    @property
    def sample_dir(self) -> Path:
        return self.data_dir / "samples"
