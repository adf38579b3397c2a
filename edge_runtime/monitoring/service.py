"""Device services around a model: monitor, durable outbox, forwarder, MQTT link and local HTTP endpoint.

:func:`start_services` builds them from one :class:`~edge_runtime.device_config.DeviceConfig` in dependency
order (outbox -> link -> forwarder -> monitor -> HTTP), and :meth:`DeviceServices.close` takes them down in
reverse so nothing is lost: the monitor's last record goes into the outbox, the forwarder gets a bounded chance
to deliver it, and only then the link says offline. No broker, or an unreachable one, is normal: records wait
in the outbox. `run`, `serve` and `agent` all use this; the agent passes its own link so metrics and updates
share one MQTT connection.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from edge_runtime.device_config import DeviceConfig
from edge_runtime.errors import ConfigError, EdgeRuntimeError
from edge_runtime.monitoring.health import HealthCheck, HealthWatch
from edge_runtime.monitoring.monitor import Monitor
from edge_runtime.package.signing import OPERATOR, TrustStore

if TYPE_CHECKING:
    from edge_runtime.monitoring.feedback import FeedbackSubscriber
    from edge_runtime.monitoring.http import MonitorHttpServer
    from edge_runtime.package.manifest import Manifest
    from edge_runtime.pipeline import FrameResult, Pipeline
    from edge_runtime.sync.forwarder import Forwarder
    from edge_runtime.sync.mqtt import MqttLink
    from edge_runtime.sync.outbox import Outbox

log = logging.getLogger(__name__)


def source_info(spec: str, kind: str | None = None) -> dict[str, Any]:
    """What health shows about the input: the spec with any URL password removed (RTSP URLs often hold one)."""
    shown = spec
    if "://" in spec:
        parts = urlsplit(spec)
        if parts.password is not None or parts.username is not None:
            host = parts.hostname or ""
            netloc = f"{host}:{parts.port}" if parts.port else host
            shown = urlunsplit((parts.scheme, f"***@{netloc}", parts.path, parts.query, parts.fragment))
    return {"spec": shown, **({"kind": kind} if kind else {})}


@dataclass
class DeviceServices:
    """The running services; use as a context manager or call :meth:`close`."""

    config: DeviceConfig
    monitor: Monitor
    outbox: Outbox | None = None
    link: MqttLink | None = None
    forwarder: Forwarder | None = None
    http: MonitorHttpServer | None = None
    owns_link: bool = True
    source: dict[str, Any] | None = None
    left_in_outbox: int | None = None  # records still waiting when closed (for the next run)
    commands: Any = None  # edge_runtime.sync.commands.CommandHandler on the device's command topic
    watch: HealthWatch | None = None
    feedback: FeedbackSubscriber | None = None
    policies: Any = None  # edge_runtime.monitoring.collect.PolicyStore: signed collection policies
    uploader: Any = None  # edge_runtime.sync.uploader.SampleUploader
    _pipeline: Pipeline | None = field(default=None, repr=False)
    _closed: bool = field(default=False, repr=False)

    # ----------------------------------------------------------------- feeding the monitor
    def attach(self, pipeline: Pipeline) -> None:
        """Monitor this pipeline: a sink for predictions, a stage hook for time spent in sinks, its counters.

        The sink is a wrapper, not the Monitor itself, because the pipeline closes its sinks when a run ends
        and the monitor must outlive that (its last record is written in :meth:`close`)."""
        self._pipeline = pipeline
        self.monitor.pipeline_stats = pipeline.stats
        self.monitor.source_label = (self.source or {}).get("spec", "")
        self.monitor.set_sources([lane.name for lane in pipeline.lanes])
        pipeline.add_sink(self.observe)
        pipeline.add_stage_hook(self._stage_times)

    def observe(self, result: FrameResult) -> None:
        """Feed one result to the monitor (a pipeline sink; `serve` calls it per request)."""
        p = result.prediction
        if p.model and (p.version != self.monitor.version or p.model != self.monitor.model):
            self._follow_model()
        self.monitor(result)

    def _stage_times(self, stages: Mapping[str, float]) -> None:
        ms = stages.get("sinks")
        if ms is not None:
            self.monitor.latency.add("sinks", ms)

    def _follow_model(self) -> None:
        """The pipeline swapped models (OTA): label metrics with the new one and restart drift on its reference."""
        if self._pipeline is None:
            return
        m = self._pipeline.model.manifest
        self.monitor.set_model(m)
        if self.link is not None and self.owns_link:
            self.link.update_state(model=m.name, version=m.version)

    def enable_feedback(self, trust: TrustStore) -> bool:
        """Accept operator-signed labels on ``devices/{id}/feedback`` (needs the link and an operator key)."""
        if self.link is None or not trust.has_role(OPERATOR):
            return False
        from edge_runtime.monitoring.feedback import FeedbackSubscriber

        self.feedback = FeedbackSubscriber(self.monitor, trust, self.config.device_id)
        self.link.subscribe(self.link.topics.feedback(self.config.device_id), self.feedback)
        return True

    # ----------------------------------------------------------------- health
    def add_health_check(self, check: HealthCheck) -> None:
        """One more check for /health (e.g. the update agent's state): returns a list of health.Reason."""
        self._watch().checks.append(check)

    def _watch(self) -> HealthWatch:
        if self.watch is None:
            self.watch = HealthWatch(self.config.monitor.health)
        return self.watch

    def health(self) -> dict[str, Any]:
        """The /health document: model, source, outbox, broker and forwarder, plus ``status`` (ok, degraded,
        unhealthy), ``reasons`` (each with its figure and limit) and ``problems`` (the reasons' messages)."""
        h = self.monitor.health()
        h = {"device": self.config.device_id, **h}
        if self.source is not None:
            h["source"] = {**self.source, **(h.get("source") or {})}
        if self.link is not None:
            h["broker"] = {"configured": True, **(h.get("broker") or {})}
        if self.forwarder is not None:
            h["forwarder"] = self.forwarder.stats()
        if self.policies is not None:
            h["collection"] = {"policy": self.policies.describe(), "uploads": self.uploader.stats(),
                               "selector": self.monitor.collection.describe() if self.monitor.collection else None}
        if self.outbox is not None and h.get("outbox") is not None:
            h["outbox"] = {**h["outbox"], "max_bytes": self.outbox.config.max_bytes}
        watch = self._watch()
        watch.observe(None, None, self.monitor.last_frame_monotonic)
        status, reasons = watch.assess(h)
        if "captured" in (h.get("source") or {}):
            h["source"] = {**h["source"], "stall_s": round(watch.source_stall_s(), 3)}
        h["status"] = status
        h["reasons"] = [r.to_dict() for r in reasons]
        h["problems"] = [r.message for r in reasons]
        return h

    # ----------------------------------------------------------------- shutdown
    def close(self) -> None:
        """Stop in reverse order: HTTP, monitor (last record), a bounded drain to the broker, forwarder, link."""
        if self._closed:
            return
        self._closed = True
        if self.http is not None:
            self.http.stop()
        self.monitor.close()
        if self.uploader is not None:
            self.uploader.stop()
        if self.forwarder is not None:
            self.forwarder.wake()
            self._drain(self.config.shutdown_flush_s)
            self.forwarder.stop()
        if self.link is not None and self.owns_link:
            self.link.stop()
        if self.outbox is not None:
            self.left_in_outbox = self.outbox.count()
            self.outbox.close()

    def _drain(self, timeout: float) -> None:
        """Give the forwarder up to ``timeout`` s to empty the outbox while connected (offline: leave it)."""
        assert self.outbox is not None and self.link is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.link.connected and self.outbox.count() > 0:
            time.sleep(0.05)
        left = self.outbox.count()
        if left:
            log.info("%d records stay in the outbox %s for the next run", left, self.outbox.path)

    def __enter__(self) -> DeviceServices:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_outbox(config: DeviceConfig) -> Outbox | None:
    from edge_runtime.sync.outbox import Outbox

    if config.outbox is None:
        return None
    try:
        return Outbox(config.outbox)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the outbox {config.outbox.path}: {exc}") from exc


def _make_link(config: DeviceConfig) -> MqttLink | None:
    from edge_runtime.sync.mqtt import MqttLink

    if config.mqtt is None:
        return None
    tls = config.mqtt.tls
    if tls is not None:
        for name in ("ca_cert", "client_cert", "client_key"):
            path = getattr(tls, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"mqtt.tls.{name}: {path} is not a file")
    try:
        return MqttLink(config.mqtt)
    except OSError as exc:  # ssl.SSLError included: an unreadable certificate or key
        raise ConfigError(f"mqtt.tls: cannot load the TLS files: {exc}") from exc


def _start_http(services: DeviceServices, config: DeviceConfig) -> MonitorHttpServer | None:
    from edge_runtime.monitoring.http import MonitorHttpServer

    if config.http is None:
        return None
    try:
        server = MonitorHttpServer(services, config.http.host, config.http.port)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.http.host}:{config.http.port}: {exc.strerror or exc}") from exc
    return server.start()


def _operator_trust(config: DeviceConfig, trust: Any) -> Any:
    """The operator keys: the caller's (the agent's), else the device config's (`run`, `serve`), else None."""
    if trust is None and config.trust is not None:
        try:
            trust = TrustStore.from_config(config.trust).for_role("operator")
        except EdgeRuntimeError as exc:
            raise ConfigError(f"trust: {exc}") from exc
    return trust


def _command_handler(config: DeviceConfig, monitor: Monitor, link: MqttLink, trust: Any, state: Path | None) -> Any:
    """Signed commands on the device's command topic (without operator keys every command is refused, reported)."""
    from edge_runtime.sync.commands import CommandHandler
    from edge_runtime.sync.replay import SequenceStore

    if state is None and config.outbox is not None:
        state = config.outbox.path.parent / "command_replay.json"
    store = SequenceStore(state) if state is not None else None
    handler = CommandHandler(config.device_id, trust, store, monitor.event)
    handler.register("upload_samples", lambda cmd: monitor.upload_samples(cmd.request_id, list(cmd.ids), cmd.max))
    handler.attach(link, link.topics)
    return handler


def _collection(services: DeviceServices, link: MqttLink, trust: Any, groups: tuple[str, ...]) -> None:
    """Signed collection policies on the fleet's and the groups' policy topics; the last good one applies at once
    (offline start); the uploader sends samples only while the policy and the device config both allow it."""
    from edge_runtime.monitoring.collect import PolicyStore
    from edge_runtime.sync.uploader import SampleUploader

    config, monitor = services.config, services.monitor
    if monitor.samples is None or config.outbox is None:
        return
    allowed = config.monitor.samples.upload
    state = config.outbox.path.parent / "collect"
    collection = monitor.collection
    assert collection is not None
    store = PolicyStore(state, groups or config.groups, trust, link.topics,
                        on_policy=lambda d: collection.set_policy(d.policy if d else None, allowed),
                        report=monitor.event)
    cur = store.current
    if cur is not None:
        collection.set_policy(cur.policy, allowed)

    def limits() -> Any:
        doc = store.current
        return doc.policy.upload_limits if allowed and doc is not None and doc.policy.upload else None

    services.policies = store
    services.uploader = SampleUploader(monitor.samples, link, config.device_id, state / "upload-budget.json",
                                       limits).start()
    monitor.samples.on_pending = services.uploader.wake
    store.attach(link)


def start_services(config: DeviceConfig, manifest: Manifest | None = None, *, link: MqttLink | None = None,
                   http: bool = True, source: dict[str, Any] | None = None, command_trust: Any = None,
                   command_state: Path | None = None, groups: tuple[str, ...] = ()) -> DeviceServices:
    """Build and start the services ``config`` asks for. ``link``: an already made link to share (the caller
    starts and stops it); ``http``: serve /metrics and /health when the config names a port (serve has its own);
    ``command_trust``/``command_state``: operator keys and the replay-state file for signed commands (the same
    operator keys admit signed feedback labels on the feedback topic, and signed collection policies for the
    fleet and ``groups``, else the config's groups).
    A configuration problem (unwritable outbox, missing TLS file, busy port) raises ConfigError, after closing
    whatever was already started."""
    owns_link = link is None
    outbox = _open_outbox(config)
    services: DeviceServices | None = None
    try:
        if link is None:
            link = _make_link(config)
        forwarder = None
        if link is not None and outbox is not None:
            from edge_runtime.sync.forwarder import Forwarder

            forwarder = Forwarder(outbox, link, config.forwarder)
        baseline = config.outbox.path.parent / "drift-baseline.json" if config.outbox is not None else None
        monitor = Monitor(config.monitor, manifest, outbox, device_id=config.device_id,
                          on_record=forwarder.wake if forwarder is not None else None, baseline_file=baseline)
        services = DeviceServices(config, monitor, outbox, link, forwarder, owns_link=owns_link, source=source,
                                  watch=HealthWatch(config.monitor.health))
        monitor.source_label = (source or {}).get("spec", "")
        if link is not None:
            monitor.attach_link(link)
            trust = _operator_trust(config, command_trust)
            services.commands = _command_handler(config, monitor, link, trust, command_state)
            if trust is not None:
                services.enable_feedback(trust)
            _collection(services, link, trust, groups)
            if owns_link:
                if manifest is not None:
                    link.update_state(model=manifest.name, version=manifest.version)
                link.start()
        if forwarder is not None:
            forwarder.start()
        if http:
            services.http = _start_http(services, config)
    except BaseException:
        if services is not None:
            services.close()
        elif outbox is not None:
            outbox.close()
        raise
    return services
