"""The device configuration file (YAML): who the device is, where its broker is, and what it keeps locally.

One file feeds `edge-runtime run --config`, `serve --config` and the agent's monitoring section::

    device_id: cam-042
    mqtt: {host: broker.lan, port: 8883, username: cam-042, password: ${EDGE_MQTT_PASSWORD},
           tls: {ca_cert: ca.crt}}
    outbox: {path: outbox.db, max_bytes: 67108864}
    monitor: {period_s: 10}
    http: {port: 9100}

Relative paths are taken relative to the file's folder; ``${VAR}`` in a string is replaced by the environment
variable VAR (so a password can live in systemd's EnvironmentFile instead of the YAML). The models do no I/O:
:func:`load_device_config` reads, expands and resolves; the models validate. See deploy/device.example.yaml.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import ConfigError, validation_message
from edge_runtime.fsutil import read_yaml
from edge_runtime.monitoring.config import MonitorConfig
from edge_runtime.multisource import NamedSource, check_unique
from edge_runtime.package.signing import TrustConfig
from edge_runtime.sync.forwarder import ForwarderConfig
from edge_runtime.sync.mqtt_settings import MqttSettings
from edge_runtime.sync.outbox import OutboxConfig
from edge_runtime.sync.topics import check_segment

DEFAULT_OUTBOX = Path("outbox.db")
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class HttpConfig(BaseModel):
    """The local Prometheus /metrics and JSON /health endpoint of `run` (serve uses its own port)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(ge=0, le=65535, description="TCP port; 0 picks a free one (printed on stderr).")


class DeviceConfig(BaseModel):
    """Everything a device needs besides the model and the source."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device_id: str = Field(description="This device's id: a topic level under {prefix}/devices/.")
    mqtt: MqttSettings | None = Field(
        default=None, description="Broker settings (device_id is taken from above); none: records stay in the outbox."
    )
    outbox: OutboxConfig | None = Field(
        default=None, description="Durable store-and-forward queue of metric records and events; none: memory only."
    )
    forwarder: ForwarderConfig = Field(default_factory=ForwarderConfig, description="Outbox-to-MQTT batching.")
    monitor: MonitorConfig = Field(default_factory=MonitorConfig, description="Metrics, drift and sample capture.")
    http: HttpConfig | None = Field(default=None, description="Local /metrics and /health endpoint of `run`.")
    shutdown_flush_s: float = Field(
        default=5.0, ge=0, description="On exit, wait up to this long for the outbox to drain to a connected broker."
    )
    groups: tuple[str, ...] = Field(default=(), description="Fleet groups of this device: their signed collection "
                                    "policies apply here (a group's over the fleet's).")
    trust: TrustConfig | None = Field(
        default=None, description="Operator keys that may sign commands (upload_samples); none: every command is "
        "refused and reported.",
    )
    sources: list[NamedSource] = Field(
        default_factory=list, description="`run`: the named inputs served by the one model, each with its options "
        "and motion gate (the agent config's schema); instead of --source.",
    )

    @model_validator(mode="before")
    @classmethod
    def _device_id_into_mqtt(cls, data: Any) -> Any:
        """The broker section names no device: it is this device."""
        if isinstance(data, dict) and isinstance(data.get("mqtt"), dict):
            mqtt = data["mqtt"]
            if "device_id" in mqtt and mqtt["device_id"] != data.get("device_id"):
                raise ValueError("mqtt.device_id differs from device_id: set device_id once, at the top")
            data = {**data, "mqtt": {**mqtt, "device_id": data.get("device_id")}}
        return data

    @model_validator(mode="after")
    def _check(self) -> DeviceConfig:
        check_segment(self.device_id, "device_id")
        for g in self.groups:
            check_segment(g, "group")
        check_unique(self.sources)
        if self.mqtt is not None and self.outbox is None:
            raise ValueError("a broker needs the outbox (records wait there while offline): set outbox.path")
        return self


def _expand_env(value: Any, where: str = "") -> Any:
    """Replace ``${VAR}`` in every string of a parsed YAML document; a missing variable is a ConfigError."""
    if isinstance(value, dict):
        return {k: _expand_env(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in os.environ:
                raise ConfigError(f"{where}: environment variable {m.group(1)} is not set")
            return os.environ[m.group(1)]

        return _ENV_REF.sub(sub, value)
    return value


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else base / path


def resolve_paths(cfg: DeviceConfig, base: Path) -> DeviceConfig:
    """A copy with every relative path (outbox, TLS files, sample folder) taken relative to ``base``."""
    update: dict[str, Any] = {}
    if cfg.outbox is not None:
        update["outbox"] = cfg.outbox.model_copy(update={"path": _resolve(cfg.outbox.path, base)})
    if cfg.mqtt is not None and cfg.mqtt.tls is not None:
        t = cfg.mqtt.tls
        tls = t.model_copy(update={k: _resolve(getattr(t, k), base) for k in ("ca_cert", "client_cert", "client_key")})
        update["mqtt"] = cfg.mqtt.model_copy(update={"tls": tls})
    if cfg.trust is not None:
        update["trust"] = TrustConfig(release=[_resolve(p, base) for p in cfg.trust.release],  # type: ignore[misc]
                                      operator=[_resolve(p, base) for p in cfg.trust.operator])  # type: ignore[misc]
    samples = cfg.monitor.samples
    if samples.directory is not None:
        new_samples = samples.model_copy(update={"directory": _resolve(samples.directory, base)})
        update["monitor"] = cfg.monitor.model_copy(update={"samples": new_samples})
    return cfg.model_copy(update=update)


def parse_device_config(data: Any, base: Path, what: str = "device config", expand: bool = True) -> DeviceConfig:
    """Validate a parsed document (env refs expanded, default outbox ``outbox.db``, paths resolved)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: expected a mapping with device_id, mqtt, outbox, monitor, http")
    data = _expand_env(data) if expand else dict(data)
    if "outbox" not in data:
        data["outbox"] = {"path": str(DEFAULT_OUTBOX)}
    elif isinstance(data["outbox"], dict) and "path" not in data["outbox"]:
        data["outbox"] = {**data["outbox"], "path": str(DEFAULT_OUTBOX)}
    try:
        cfg = DeviceConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what}: {validation_message(exc)}") from exc
    except ValueError as exc:  # raised by check_segment inside a validator
        raise ConfigError(f"invalid {what}: {exc}") from exc
    return resolve_paths(cfg, base)


def load_device_config(path: str | Path) -> DeviceConfig:
    """Read a device YAML (or JSON) file; any problem is one ConfigError line naming the file and the field."""
    path = Path(path)
    data = read_yaml(path, "device config")
    return parse_device_config(data, path.resolve().parent, f"device config {path}")


def embedded_device_config(device_id: str, mqtt: MqttSettings | None, section: dict[str, Any], base: Path,
                           what: str) -> DeviceConfig:
    """A DeviceConfig for a host that already names the device and broker (the agent's config): ``section``
    holds the rest (outbox, monitor, forwarder, http); the outbox defaults to ``base/outbox.db``."""
    for key in ("device_id", "mqtt", "sources"):
        if key in section:
            raise ConfigError(f"{what}: {key} is set at the top of the file, not here")
    data = {**section, "device_id": device_id, "mqtt": mqtt.model_dump() if mqtt is not None else None}
    return parse_device_config(data, base, what)


def default_state_dir() -> Path:
    """Where the CLI shortcuts keep the outbox: systemd's $STATE_DIRECTORY, else ~/.local/state/edge-runtime."""
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "edge-runtime"
