"""Input sources: cameras and video (OpenCV), sensor streams (serial, stdin, file, UDP), and a motion gate.

``open_source(spec)`` turns a ``--source`` string into a source:

- ``0``, ``1``: camera by device index (USB/CSI); ``/dev/video0``: V4L2 device path
- ``rtsp://...``, ``http(s)://...`` (MJPEG), ``tcp://...``: network stream, reconnected with backoff on drops
- ``clip.mp4`` (any other path): video file, every frame processed by default
- ``data.csv``, ``data.jsonl``: sensor samples from a file; ``stdin`` (or ``-``): from standard input
- ``serial:/dev/ttyUSB0?baud=115200``: from a serial port (pyserial); ``udp://0.0.0.0:9000``: from UDP datagrams
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import ConfigError, SourceError
from edge_runtime.sources.base import (
    END,
    DropPolicy,
    IterableSource,
    ReconnectPolicy,
    Sample,
    Source,
    SourceCounters,
    ThreadedSource,
)
from edge_runtime.sources.windowing import WindowSpec, window_spec_for

SENSOR_FILE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".tsv")
_STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "tcp")


class SourceOptions(BaseModel):
    """How a source hands samples over and survives drops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    drop_policy: DropPolicy | None = Field(
        default=None, description="None: 'block' for files and stdin, 'newest-only' for cameras, 'drop-oldest' else."
    )
    queue_size: int = Field(default=4, ge=1, description="Samples held for drop-oldest and block.")
    reconnect: ReconnectPolicy = Field(default_factory=ReconnectPolicy, description="Backoff for live inputs.")
    fps_limit: float | None = Field(default=None, gt=0, description="Pace a video source at this frame rate.")
    loop: bool = Field(default=False, description="Start a video file over at its end (demos, agents on a clip).")


def source_kind(spec: str) -> str:
    """'frame' for cameras and video, 'window' for sensor streams: checked against the model before opening."""
    s = spec.strip()
    if s in ("stdin", "-") or s.startswith(("serial:", "udp://")) or s.lower().endswith(SENSOR_FILE_SUFFIXES):
        return "window"
    return "frame"


def _policy(options: SourceOptions, default: DropPolicy) -> DropPolicy:
    return options.drop_policy or default


def _open_sensor(spec: str, window: WindowSpec | None, options: SourceOptions) -> ThreadedSource:
    from edge_runtime.sources import sensors

    if window is None:
        raise ConfigError(f"source {spec!r} gives sensor samples; it needs a model with a tensor input")
    if spec in ("stdin", "-"):
        return sensors.StdinSource(window, _policy(options, DropPolicy.BLOCK), options.queue_size)
    if spec.startswith("serial:"):
        parts = urlsplit(spec[len("serial:") :])
        query = parse_qs(parts.query)
        try:
            baud = int(query.get("baud", ["115200"])[0])
        except ValueError as exc:
            raise ConfigError(f"bad baud rate in {spec!r}") from exc
        if not parts.path:
            raise ConfigError(f"serial source {spec!r} names no port (serial:/dev/ttyUSB0?baud=115200)")
        policy = _policy(options, DropPolicy.DROP_OLDEST)
        return sensors.SerialSource(parts.path, baud, window, policy, options.queue_size, options.reconnect)
    if spec.startswith("udp://"):
        parts = urlsplit(spec)
        try:
            port = parts.port
        except ValueError as exc:  # "Port out of range 0-65535", "Port could not be cast to integer value"
            raise ConfigError(f"UDP source {spec!r}: {exc}") from None
        if parts.hostname is None or port is None:
            raise ConfigError(f"UDP source {spec!r} needs a host and a port (udp://0.0.0.0:9000)")
        policy = _policy(options, DropPolicy.DROP_OLDEST)
        return sensors.UdpSource(parts.hostname, port, window, policy, options.queue_size)
    return sensors.SensorFileSource(Path(spec), window, _policy(options, DropPolicy.BLOCK), options.queue_size)


def _open_video(spec: str, options: SourceOptions) -> ThreadedSource:
    from edge_runtime.sources.camera import VideoSource

    live = _policy(options, DropPolicy.NEWEST_ONLY)
    common = {"queue_size": options.queue_size, "reconnect": options.reconnect, "fps_limit": options.fps_limit,
              "loop": options.loop}
    if re.fullmatch(r"\d+", spec):
        return VideoSource(int(spec), "device", live, **common)
    if spec.startswith("/dev/"):
        return VideoSource(spec, "device", live, **common)
    scheme = urlsplit(spec).scheme.lower()
    if scheme in _STREAM_SCHEMES:
        return VideoSource(spec, "stream", live, **common)
    if scheme and len(scheme) > 1:
        raise ConfigError(f"unsupported source scheme {scheme!r} in {spec!r}")
    path = Path(spec)
    if not path.is_file():
        raise SourceError(f"video file {spec} does not exist")
    return VideoSource(str(path), "file", _policy(options, DropPolicy.BLOCK), **common)


def open_source(
    spec: str, options: SourceOptions | None = None, window: WindowSpec | None = None
) -> ThreadedSource:
    """Build (not yet start) the source a ``--source`` string names. ``window`` is needed for sensor sources."""
    options = options or SourceOptions()
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty --source")
    if source_kind(spec) == "window":
        return _open_sensor(spec, window, options)
    return _open_video(spec, options)


__all__ = [
    "END",
    "DropPolicy",
    "IterableSource",
    "ReconnectPolicy",
    "Sample",
    "Source",
    "SourceCounters",
    "SourceOptions",
    "ThreadedSource",
    "WindowSpec",
    "open_source",
    "source_kind",
    "window_spec_for",
]
