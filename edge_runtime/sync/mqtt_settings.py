"""How the device reaches its broker: host, credentials, TLS, protocol, backoff and payload bounds.

Plain validated configuration, apart from the connection itself (edge_runtime.sync.mqtt), so device and agent
configs can be read and checked without importing paho.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edge_runtime.errors import ConfigError
from edge_runtime.sync.topics import Topics, check_segment


class TlsSettings(BaseModel):
    """TLS to the broker: the CA that signed its certificate, and a client certificate for mutual TLS."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_cert: Path | None = Field(default=None, description="CA certificate (PEM) that signed the broker's cert.")
    client_cert: Path | None = Field(default=None, description="Client certificate (PEM) for mutual TLS.")
    client_key: Path | None = Field(default=None, description="Private key (PEM) of the client certificate.")
    insecure: bool = Field(default=False, description="Skip hostname verification (testing only).")

    @model_validator(mode="after")
    def _pair(self) -> TlsSettings:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert and client_key go together: set both or neither")
        return self


class MqttSettings(BaseModel):
    """One device's broker connection."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 is usual with TLS).")
    device_id: str = Field(description="This device's id: a topic level under {prefix}/devices/.")
    prefix: str = Field(default="edge", description="Topic prefix shared by the fleet.")
    username: str | None = Field(default=None, description="Broker user name (usually the device id).")
    password: str | None = Field(default=None, description="Broker password.")
    tls: TlsSettings | None = Field(default=None, description="TLS settings; None for plain TCP.")
    keepalive: int = Field(default=30, ge=5, le=3600, description="Keepalive interval in seconds.")
    protocol: Literal["auto", "5", "3.1.1"] = Field(
        default="auto", description="MQTT version; 'auto' tries 5 and falls back to 3.1.1 if the broker refuses it."
    )
    reconnect_min_s: float = Field(default=0.5, gt=0, description="First reconnect delay; doubles per failure.")
    reconnect_max_s: float = Field(default=30.0, gt=0, description="Largest reconnect delay.")
    max_payload: int = Field(
        default=256 * 1024, ge=1024, description="Largest payload this link publishes; keep <= the broker's limit."
    )
    max_queued: int = Field(
        default=10000, ge=1, description="Messages paho may hold while offline before publish() fails."
    )
    max_incoming: int = Field(
        default=(1 << 20) + 4096, ge=4096, description="Largest packet the broker may send this link (MQTT 5 "
        "Maximum Packet Size in CONNECT: larger messages are never delivered, so never parsed). Keep above the "
        "chunk size of package transfers.",
    )

    @model_validator(mode="after")
    def _check(self) -> MqttSettings:
        check_segment(self.device_id, "device id")
        Topics(self.prefix)
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")
        return self

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)


def settings_from_url(url: str, device_id: str, **extra: Any) -> MqttSettings:
    """``mqtt://host:port`` or ``mqtts://host:port`` -> settings (a user mistake raises ConfigError)."""
    from urllib.parse import urlparse

    u = urlparse(url)
    if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
        raise ConfigError(f"broker URL {url!r} must look like mqtt://host:1883 or mqtts://host:8883")
    if u.scheme == "mqtts" and "tls" not in extra:
        extra["tls"] = TlsSettings()
    try:
        return MqttSettings(
            host=u.hostname, port=u.port or (8883 if u.scheme == "mqtts" else 1883), device_id=device_id,
            username=u.username, password=u.password, **extra,
        )
    except ValueError as exc:
        raise ConfigError(f"invalid MQTT settings: {exc}") from exc


PASSWORD_ENV = "EDGE_RUNTIME_MQTT_PASSWORD"  # noqa: S105 - the variable's name, not a password


def resolve_password(password_file: Path | None) -> str | None:
    """The broker password from ``password_file`` (first line), else ``$EDGE_RUNTIME_MQTT_PASSWORD``, else None.

    Kept out of command lines and URLs, where ``ps`` and shell histories show it."""
    import os

    if password_file is not None:
        try:
            lines = Path(password_file).read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the MQTT password file {password_file}: {exc.strerror}") from exc
        return lines[0] if lines else ""
    return os.environ.get(PASSWORD_ENV) or None
