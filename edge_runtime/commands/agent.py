"""`edge-runtime agent --config FILE`: serve a model on a source, report over MQTT, apply OTA updates.

Thin wiring: the config names the device, broker, trusted keys, source and update settings; the update agent
recovers any interrupted update and loads the model, the pipeline serves it, and the agent swaps models in it.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import ConfigError, validation_message
from edge_runtime.fsutil import read_yaml
from edge_runtime.package.signing import TrustConfig, check_trust_fields
from edge_runtime.sources.base import DropPolicy, ThreadedSource

log = logging.getLogger(__name__)


class AgentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_id: str = Field(description="This device's id.")
    profile: str = Field(description="Device profile name.")
    state_dir: Path = Field(description="Directory for slots, downloads and state.")
    trust: TrustConfig | None = Field(
        default=None, description="Public keys by role: release (packages) and operator (documents, commands)."
    )
    trusted_keys: list[Path] = Field(
        default_factory=list, description="Legacy single list: every key trusted as both release and operator."
    )
    groups: list[str] = Field(default_factory=list, description="Fleet groups this device belongs to.")
    initial_package: Path | None = Field(default=None, description="Package installed when no slot is active.")
    source: str = Field(default="synthetic", description="'synthetic' (random frames) or an open_source spec.")
    fps: float = Field(default=30.0, gt=0, description="Frame rate of the synthetic source.")
    mqtt: dict[str, Any] = Field(description="edge_runtime.sync.mqtt.MqttSettings fields except device_id.")
    update: dict[str, Any] = Field(default_factory=dict, description="UpdateSettings fields (retries, health...).")
    monitoring: dict[str, Any] = Field(
        default_factory=dict, description="Device-config sections outbox, monitor, forwarder, http "
        "(deploy/device.example.yaml); the outbox defaults to state_dir/outbox.db and shares the agent's MQTT link.",
    )

    @model_validator(mode="after")
    def _trust(self) -> AgentConfig:
        check_trust_fields(self.trust, self.trusted_keys)
        return self


class SyntheticSource(ThreadedSource):
    """Seeded random frames (or sensor windows) at a fixed rate: an input for agents without a camera."""

    def __init__(self, shape: tuple[int, ...], fps: float, kind: str = "frame") -> None:
        super().__init__("synthetic", DropPolicy.NEWEST_ONLY)
        self.kind = kind  # type: ignore[assignment]
        self.shape, self.period = shape, 1.0 / fps
        self.rng = np.random.default_rng(0)

    def _open(self) -> None:
        pass

    def _loop(self) -> None:
        while not self._wait(self.period):
            if self.kind == "frame":
                data = self.rng.integers(0, 256, self.shape, dtype=np.uint8)
            else:
                data = self.rng.normal(0, 1, self.shape).astype(np.float32)
            self._emit(data)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="agent configuration (YAML or JSON)")


def load_config(path: Path) -> AgentConfig:
    data = read_yaml(path, "agent config")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid agent config {path}: {validation_message(exc)}") from exc


def _source(cfg: AgentConfig, model: Any) -> ThreadedSource:
    spec = model.input_spec
    if cfg.source != "synthetic":
        from edge_runtime.sources import open_source

        return open_source(cfg.source)  # type: ignore[no-any-return]
    if spec.kind == "tensor":
        return SyntheticSource(tuple(d if d > 0 else 1 for d in spec.shape[1:]), cfg.fps, "window")
    h, w, _ = spec.height_width_channels
    return SyntheticSource((h, w, 3), cfg.fps)


def run(args: argparse.Namespace) -> int:
    from edge_runtime.device_config import embedded_device_config
    from edge_runtime.monitoring.health import update_agent_check
    from edge_runtime.monitoring.service import source_info, start_services
    from edge_runtime.package import TrustStore
    from edge_runtime.pipeline import Pipeline, stop_on_signals
    from edge_runtime.profiles import load_profile
    from edge_runtime.sync.mqtt import MqttLink, MqttSettings
    from edge_runtime.update.agent import UpdateAgent
    from edge_runtime.update.runtime import PackageRuntime
    from edge_runtime.update.settings import UpdateSettings

    cfg = load_config(Path(args.config))
    try:
        mqtt = MqttSettings(device_id=cfg.device_id, **cfg.mqtt)
        upd = UpdateSettings(device_id=cfg.device_id, profile=cfg.profile, state_dir=cfg.state_dir,
                             trusted_keys=tuple(cfg.trusted_keys), trust=cfg.trust, groups=tuple(cfg.groups),
                             **cfg.update)
    except (ValidationError, TypeError) as exc:
        raise ConfigError(f"invalid agent config {args.config}: {exc}") from exc
    device = embedded_device_config(cfg.device_id, mqtt, cfg.monitoring, cfg.state_dir,
                                    f"agent config {args.config}: monitoring")
    profile = load_profile(cfg.profile)
    link = MqttLink(mqtt)
    runtime = PackageRuntime(profile.name, TrustStore.load(cfg.trust, cfg.trusted_keys))
    agent = UpdateAgent(upd, link, runtime, mqtt.topics, profile.budgets.latency_ms_p95)
    if cfg.initial_package is not None and agent.slots.pointers().active is None:
        seed_initial(agent, cfg.initial_package)
    model = agent.boot()
    pipeline = Pipeline(model, _source(cfg, model), sinks=[agent.observe])
    agent.attach(pipeline, lambda: pipeline.stats().errors)
    services = start_services(device, model.manifest, link=link, source=source_info(cfg.source),
                              trust=runtime.trust)  # one MQTT link; operator-signed feedback labels
    services.attach(pipeline)
    services.add_health_check(update_agent_check(lambda: (agent.machine.state.value, agent.machine.record.reason)))
    link.start()
    agent.start()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            pipeline.run()
        except BaseException as exc:  # re-raised below, after a clean shutdown
            failure.append(exc)

    with stop_on_signals(pipeline):
        worker = threading.Thread(target=serve, name="pipeline", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    agent.stop()
    services.close()  # last metric record into the outbox, a bounded drain, before the link goes offline
    link.stop()
    print(json.dumps(pipeline.stats().to_dict()))
    if failure:  # a source that failed for good is a user-facing error (one line, exit 2); anything else a bug
        raise failure[0]
    return 0


def seed_initial(agent: Any, package: Path) -> None:
    """Install and activate the first model (verified with the device's trusted keys)."""
    from edge_runtime.package import load_package

    pkg = load_package(package, agent.trust, require_signature=True)
    if pkg.manifest.profile != agent.s.profile:
        raise ConfigError(f"initial package is for profile {pkg.manifest.profile}, device is {agent.s.profile}")
    key = f"{pkg.manifest.name}-{pkg.manifest.version}"
    agent.slots.install_dir(pkg.root, key)
    agent.slots.activate(key)
