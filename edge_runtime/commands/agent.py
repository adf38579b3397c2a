"""`edge-runtime agent --config FILE`: serve a model on a source, report over MQTT, apply OTA updates.

:func:`build_agent` is the one wiring of a device agent (config in, parts connected, nothing started): the command
and the tests both use it. The update agent recovers any interrupted update and loads the model, the pipeline
serves it on the configured source, the agent swaps models in it and watches every inference (successful or not),
and the monitoring services share the agent's MQTT link.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import ConfigError, validation_message
from edge_runtime.fsutil import read_yaml
from edge_runtime.multisource import NamedSource, check_unique
from edge_runtime.package.signing import TrustConfig, check_trust_fields
from edge_runtime.sources import SourceOptions
from edge_runtime.sources.base import DropPolicy, ThreadedSource

log = logging.getLogger(__name__)


AgentSource = NamedSource  # one named input of an agent serving several sources with its one model


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
    source_options: SourceOptions = Field(
        default_factory=SourceOptions, description="Drop policy, queue, reconnect backoff, fps_limit, loop (files)."
    )
    stall_timeout_s: float = Field(
        default=30.0, gt=0, description="A source that yields nothing this long is reported faulty (status, "
        "/health); the agent keeps retrying it and keeps taking updates.",
    )
    sources: list[AgentSource] = Field(
        default_factory=list, description="Several named sources served by the one model (instead of source).",
    )
    fps: float = Field(default=30.0, gt=0, description="Frame rate of the synthetic source.")
    mqtt: dict[str, Any] = Field(description="edge_runtime.sync.mqtt.MqttSettings fields except device_id, plus "
                                             "password_file (else $EDGE_RUNTIME_MQTT_PASSWORD).")
    update: dict[str, Any] = Field(default_factory=dict, description="UpdateSettings fields (retries, health...).")
    monitoring: dict[str, Any] = Field(
        default_factory=dict, description="Device-config sections outbox, monitor, forwarder, http "
        "(deploy/device.example.yaml); the outbox defaults to state_dir/outbox.db and shares the agent's MQTT link.",
    )

    @model_validator(mode="after")
    def _trust(self) -> AgentConfig:
        check_trust_fields(self.trust, self.trusted_keys)
        if self.sources and "source" in self.model_fields_set:
            raise ValueError("give either source (one input) or sources (several), not both")
        check_unique(self.sources)
        return self

    def named_sources(self) -> list[AgentSource]:
        """Every input as a named source (a lone ``source`` is named after its spec)."""
        if self.sources:
            return list(self.sources)
        from edge_runtime.multisource import default_source_name

        return [AgentSource(name=default_source_name(self.source), source=self.source, options=self.source_options)]


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
    p.add_argument("--reset-replay", action="store_true",
                   help="operator action after the replay state was lost: accept only documents and commands "
                        "signed from now on, then exit (re-publish the desired document afterwards)")


def load_config(path: Path) -> AgentConfig:
    data = read_yaml(path, "agent config")
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"invalid agent config {path}: {validation_message(exc)}") from exc


def open_agent_lanes(cfg: AgentConfig, model: Any) -> list[Any]:
    """A named lane (edge_runtime.multisource.SourceLane) per configured source, each with its motion gate."""
    from edge_runtime.multisource import SourceLane
    from edge_runtime.sources.motion import MotionGate

    lanes = []
    try:
        for entry in cfg.named_sources():
            gate = MotionGate(entry.motion_gate) if entry.motion_gate is not None else None
            lanes.append(SourceLane(entry.name, open_agent_source(cfg, model, entry), gate))
    except BaseException:
        for lane in lanes:
            lane.source.close()
        raise
    return lanes


def open_agent_source(cfg: AgentConfig, model: Any, entry: AgentSource | None = None) -> ThreadedSource:
    """The configured source for ``model``: sensor sources get their window from the model's input shape; live
    sources never give up (the agent reports the fault and keeps retrying)."""
    from edge_runtime.sources import open_source, source_kind, window_spec_for

    spec = model.input_spec
    entry = entry or cfg.named_sources()[0]
    if entry.source != "synthetic":
        opts = entry.options
        options = opts.model_copy(update={"reconnect": opts.reconnect.model_copy(update={"give_up": False})})
        window = None
        if source_kind(entry.source) == "window":
            if spec.kind != "tensor":
                raise ConfigError(f"agent source {entry.source!r} gives sensor samples; the model takes images")
            window = window_spec_for(spec, None, bool(model.manifest.state))
        return open_source(entry.source, options, window)  # type: ignore[no-any-return]
    if spec.kind == "tensor":
        return SyntheticSource(tuple(d if d > 0 else 1 for d in spec.shape[1:]), cfg.fps, "window")
    h, w, _ = spec.height_width_channels
    return SyntheticSource((h, w, 3), cfg.fps)


@dataclass
class AgentParts:
    """A built device agent: ``start()``, then ``serve()`` (blocks until the pipeline ends), then ``close()``."""

    config: AgentConfig
    link: Any  # edge_runtime.sync.mqtt.MqttLink
    agent: Any  # edge_runtime.update.agent.UpdateAgent
    pipeline: Any  # edge_runtime.pipeline.Pipeline
    services: Any  # edge_runtime.monitoring.service.DeviceServices

    def start(self) -> None:
        self.link.start()
        self.agent.start()

    def serve(self) -> None:
        """Run the pipeline here until it ends or ``stop()``; a source that fails for good raises SourceError."""
        self.pipeline.run()

    def stop(self) -> None:
        self.pipeline.stop()

    def close(self) -> None:
        """Stop the update agent, the services (last record, bounded drain), then the link."""
        self.agent.stop()
        self.services.close()
        self.link.stop()


def mqtt_settings(cfg: AgentConfig) -> Any:
    from edge_runtime.sync.mqtt_settings import MqttSettings, resolve_password

    section = dict(cfg.mqtt)
    password_file = section.pop("password_file", None)
    if section.get("password") is None and (password_file or section.get("username")):
        section["password"] = resolve_password(Path(password_file) if password_file else None)
    return MqttSettings(device_id=cfg.device_id, **section)


def build_agent(cfg: AgentConfig, what: str = "agent config") -> AgentParts:
    """The one wiring of a device agent (the command's and the tests'): link, update agent (recovered, model
    loaded), pipeline on the configured source, monitoring services. Nothing is started."""
    from edge_runtime.device_config import embedded_device_config
    from edge_runtime.monitoring.health import update_agent_check
    from edge_runtime.monitoring.service import start_services
    from edge_runtime.pipeline import Pipeline, PipelineConfig
    from edge_runtime.profiles import load_profile
    from edge_runtime.sync.mqtt import MqttLink
    from edge_runtime.update.agent import COMMAND_REPLAY, UpdateAgent
    from edge_runtime.update.runtime import PackageRuntime
    from edge_runtime.update.settings import UpdateSettings

    try:
        mqtt = mqtt_settings(cfg)
        upd = UpdateSettings(device_id=cfg.device_id, profile=cfg.profile, state_dir=cfg.state_dir,
                             trusted_keys=tuple(cfg.trusted_keys), trust=cfg.trust, groups=tuple(cfg.groups),
                             **cfg.update)
    except ValidationError as exc:
        raise ConfigError(f"invalid {what}: {validation_message(exc)}") from exc
    except TypeError as exc:
        raise ConfigError(f"invalid {what}: {exc}") from exc
    device = embedded_device_config(cfg.device_id, mqtt, cfg.monitoring, cfg.state_dir, f"{what}: monitoring")
    profile = load_profile(cfg.profile)
    link = MqttLink(mqtt)
    agent = UpdateAgent(upd, link, PackageRuntime(profile.name, agent_trust(cfg)), mqtt.topics,
                        profile.budgets.latency_ms_p95)
    if cfg.initial_package is not None and agent.slots.pointers().active is None:
        seed_initial(agent, cfg.initial_package)
    model = agent.boot()
    # the pipeline never gives up on model errors: the health window rolls a failing update back, and a committed
    # model that fails is reported (live statistics) while the agent keeps taking updates
    config = PipelineConfig(max_consecutive_errors=None, stall_timeout_s=cfg.stall_timeout_s, fail_on_stall=False)
    pipeline = Pipeline(model, open_agent_lanes(cfg, model), sinks=[agent.observe], config=config)
    pipeline.add_error_hook(agent.observe_error)
    agent.attach(pipeline, lambda: _source_status(pipeline))
    services = start_services(device, model.manifest, link=link, source=_sources_info(cfg),  # one MQTT link
                              command_trust=agent.trust, command_state=cfg.state_dir / COMMAND_REPLAY,
                              groups=tuple(cfg.groups))
    services.attach(pipeline)
    services.add_health_check(update_agent_check(lambda: (agent.machine.state.value, agent.machine.record.reason)))
    return AgentParts(cfg, link, agent, pipeline, services)


def _sources_info(cfg: AgentConfig) -> dict[str, Any]:
    from edge_runtime.monitoring.service import source_info

    entries = cfg.named_sources()
    info = source_info(entries[0].source)
    if len(entries) > 1:
        info["sources"] = {e.name: source_info(e.source) for e in entries}
    return info


def agent_trust(cfg: AgentConfig) -> Any:
    from edge_runtime.package import TrustStore

    return TrustStore.load(cfg.trust, cfg.trusted_keys)


def _source_status(pipeline: Any) -> dict[str, Any]:
    fault, stalled = pipeline.source_fault()
    out: dict[str, Any] = {"fault": fault, "stalled_s": round(stalled, 1)}
    if len(pipeline.lanes) > 1:
        out["sources"] = {n: {"fault": c["fault"], "stalled_s": round(c["stalled_s"], 1), "processed": c["processed"]}
                          for n, c in pipeline.stats().sources.items()}
    return out


def run(args: argparse.Namespace) -> int:
    from edge_runtime.pipeline import stop_on_signals

    cfg = load_config(Path(args.config))
    if args.reset_replay:
        return reset_replay(cfg)
    parts = build_agent(cfg, f"agent config {args.config}")
    parts.start()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            parts.serve()
        except BaseException as exc:  # re-raised below, after a clean shutdown
            failure.append(exc)

    with stop_on_signals(parts.pipeline):
        worker = threading.Thread(target=serve, name="pipeline", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    parts.close()
    print(json.dumps(parts.pipeline.stats().to_dict()))
    if failure:  # a source that failed for good is a user-facing error (one line, exit 2); anything else a bug
        raise failure[0]
    return 0


def seed_initial(agent: Any, package: Path) -> None:
    """Install and activate the first model (verified with the device's trusted keys)."""
    from edge_runtime.package import load_package

    pkg = load_package(package, agent.trust, require_signature=True)
    if pkg.manifest.profile != agent.s.profile:
        raise ConfigError(f"initial package is for profile {pkg.manifest.profile}, device is {agent.s.profile}")
    agent.slots.activate(agent.slots.install_dir(pkg.root))


def reset_replay(cfg: AgentConfig) -> int:
    """Set the replay floor of desired documents and commands to now (both copies), after a lost state."""
    from edge_runtime.sync.replay import SequenceStore
    from edge_runtime.update.agent import COMMAND_REPLAY, DESIRED_REPLAY

    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    floor = 0
    for name in (DESIRED_REPLAY, COMMAND_REPLAY):
        floor = SequenceStore(cfg.state_dir / name).reset(floor or None)
    print(f"replay state reset: documents and commands signed before sequence {floor} are refused; "
          "re-publish the desired document for this device")
    return 0
