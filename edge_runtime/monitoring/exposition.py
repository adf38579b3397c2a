"""Prometheus exposition of a device: one collector that reads the services' state at scrape time.

Conventions (https://prometheus.io/docs/practices/naming/): cumulative counts are counters named ``*_total``,
units are in names (``_seconds``, ``_bytes``, ``_ratio``, ``_celsius``), every family is present from the first
scrape (zeros before the first frame, process CPU and memory from prometheus-client's process collector), and
latency histograms have a dozen buckets around the profile's latency budget. Absent hardware (no GPU, no
thermal zone) has no series at all: absent, never zero. The pipeline thread pays nothing for any of this.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from edge_runtime.monitoring import accelerators
from edge_runtime.monitoring.system import read_temperatures, read_throttled

if TYPE_CHECKING:
    from edge_runtime.monitoring.service import DeviceServices

# PipelineStats key -> (metric name without _total, HELP)
_SOURCE_COUNTERS = (
    ("captured", "edge_source_frames_captured", "Samples (frames or sensor windows) the source delivered, "
     "counted before any drop."),
    ("dropped", "edge_source_frames_dropped", "Samples the source dropped because the pipeline was busy "
     "(drop policy newest-only or drop-oldest)."),
    ("reconnects", "edge_source_reconnects", "Times a lost camera or stream was reopened successfully."),
    ("reconnect_attempts", "edge_source_reconnect_attempts", "Attempts to reopen a lost camera or stream."),
    ("bad_lines", "edge_source_bad_lines", "Sensor lines that could not be parsed and were skipped."),
    ("skipped_still", "edge_pipeline_frames_skipped_still", "Frames the motion gate skipped as unchanged."),
    ("errors", "edge_inference_errors", "Samples the model rejected or failed on (each one skipped)."),
    ("sink_errors", "edge_sink_errors", "Failures of an output sink (JSON lines, MQTT, files), each isolated."),
)
_LINK_COUNTERS = (
    ("connects", "edge_broker_connects", "Successful connections to the MQTT broker (reconnects included)."),
    ("connect_failures", "edge_broker_connect_failures", "Failed or refused connection attempts."),
    ("disconnects", "edge_broker_disconnects", "Times the MQTT link dropped."),
    ("published", "edge_broker_messages_published", "Messages the broker acknowledged."),
    ("publish_failures", "edge_broker_publish_failures", "Messages that could not be published."),
)


def _counter(cls: Any, name: str, doc: str, value: float, labels: dict[str, str] | None = None) -> Any:
    fam = cls(name, doc, labels=list(labels or {}))
    fam.add_metric(list((labels or {}).values()), value)
    return fam


def make_collector(services: DeviceServices) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class DeviceCollector:
        def collect(self) -> Iterator[Any]:
            m = services.monitor
            model = {"model": m.model, "version": m.version}
            yield _counter(GaugeMetricFamily, "edge_model_info", "The model in use (value 1), by name and version.",
                           1.0, model)
            yield _counter(CounterMetricFamily, "edge_frames", "Samples the monitor observed (predictions made).",
                           m.frames, model)
            yield _latency(HistogramMetricFamily, m, model)
            yield from _pipeline(CounterMetricFamily, GaugeMetricFamily, services)
            yield from _monitor_state(CounterMetricFamily, GaugeMetricFamily, services)
            yield from _outbox_and_link(CounterMetricFamily, GaugeMetricFamily, services)
            yield from _hardware(GaugeMetricFamily)

    return DeviceCollector()


def _latency(cls: Any, m: Any, model: dict[str, str]) -> Any:
    h = cls("edge_stage_latency_seconds", f"Time per pipeline stage and sample (capture_wait: queued after capture; "
            f"end_to_end: capture to prediction). Buckets centre on the {m.latency.budget_ms:g} ms budget.",
            labels=["stage", *model])
    for stage, hist in m.latency.exposed.items():
        cum, buckets = 0, []
        for bound, n in zip(hist.bounds, hist.counts, strict=False):
            cum += n
            buckets.append((f"{bound / 1000.0:g}", cum))
        buckets.append(("+Inf", hist.count))
        h.add_metric([stage, *model.values()], buckets, sum_value=hist.total / 1000.0)
    return h


def _pipeline(counter: Any, gauge: Any, services: DeviceServices) -> Iterator[Any]:
    m = services.monitor
    stats = m.pipeline_stats() if m.pipeline_stats is not None else None
    d = stats.to_dict() if hasattr(stats, "to_dict") else dict(stats or {})
    if "requests" in d:  # `serve`: its source is requests, counted by serve_guard.ServeCounters
        return
    src = {"source": m.source_label}
    per = d.get("sources") or {}
    for key, name, doc in _SOURCE_COUNTERS:
        if len(per) > 1 and all(key in c for c in per.values()):  # several sources: one sample per source name
            fam = counter(name, doc, labels=["source"])
            for source, c in per.items():
                fam.add_metric([source], c.get(key) or 0)
            yield fam
        else:
            yield _counter(counter, name, doc, d.get(key) or 0, src)
    age = math.nan if m.last_frame_time is None else max(0.0, time.time() - m.last_frame_time)
    yield _counter(gauge, "edge_last_frame_age_seconds", "Age of the newest processed frame (its capture time to "
                   "now); NaN before the first frame.", age, src)
    watch = services.watch
    if watch is not None:
        yield _counter(gauge, "edge_source_stall_seconds", "Seconds since the source last delivered a sample.",
                       watch.source_stall_s(), src)


def _monitor_state(counter: Any, gauge: Any, services: DeviceServices) -> Iterator[Any]:
    m = services.monitor
    fam = counter("edge_events", "Events the device raised (drift, drift_cleared, model_changed, accuracy_decay, "
                  "...), by type.", labels=["type"])
    for kind, n in sorted(m.event_counts.items()):
        fam.add_metric([kind], n)
    yield fam
    yield _counter(counter, "edge_monitor_records_dropped", "Metric records and events dropped before the outbox "
                   "(its writer fell behind).", m.emit_dropped)
    active = gauge("edge_drift_active", "1 while a drift feature is in alarm against its reference (source: "
                   "with several sources, each has its own drift windows).", labels=["feature", "reference", "source"])
    score = gauge("edge_drift_score_ratio", "Latest drift statistic of a feature divided by its alarm threshold "
                  "(alarm above 1).", labels=["feature", "reference", "source"])
    for source, drift in m.drift_detectors():
        ref = drift.reference_kind
        for feature, (value, on) in sorted(drift.exposition().items()):
            active.add_metric([feature, ref, source], 1.0 if on else 0.0)
            score.add_metric([feature, ref, source], value)
    yield active
    yield score
    if m.field is not None:
        yield from m.field.families(counter, gauge)
    status = services.health()["status"]
    fam = gauge("edge_health_status", "1 for the current /health status (ok, degraded, unhealthy), else 0.",
                labels=["status"])
    for s in ("ok", "degraded", "unhealthy"):
        fam.add_metric([s], 1.0 if s == status else 0.0)
    yield fam


def _outbox_and_link(counter: Any, gauge: Any, services: DeviceServices) -> Iterator[Any]:
    if services.outbox is not None:
        st = services.outbox.stats()
        yield _counter(gauge, "edge_outbox_records", "Records waiting in the outbox for the broker.",
                       st.get("records") or 0)
        yield _counter(gauge, "edge_outbox_bytes", "Payload bytes waiting in the outbox.", st.get("bytes") or 0)
        yield _counter(gauge, "edge_outbox_capacity_bytes", "The outbox's byte bound (oldest dropped beyond it).",
                       services.outbox.config.max_bytes)
        yield _counter(counter, "edge_outbox_dropped_records", "Records the outbox dropped to stay in its bounds.",
                       st.get("dropped") or 0)
        yield _counter(counter, "edge_outbox_append_failures", "Records that could not be written to the outbox.",
                       st.get("append_failures") or 0)
    if services.link is not None:
        status = services.link.status()
        yield _counter(gauge, "edge_broker_connected", "1 while the MQTT link is connected.",
                       1.0 if status.get("connected") else 0.0)
        for key, name, doc in _LINK_COUNTERS:
            yield _counter(counter, name, doc, status.get(key) or 0)


def _hardware(gauge: Any) -> Iterator[Any]:
    temps = read_temperatures()
    if temps:
        fam = gauge("edge_temperature_celsius", "Thermal zone temperature.", labels=["zone"])
        for zone, t in temps.items():
            fam.add_metric([zone], t)
        yield fam
    throttled = read_throttled(use_vcgencmd=False)
    if throttled is not None:
        fam = gauge("edge_throttled", "Raspberry Pi firmware throttling flags (1 set).", labels=["flag"])
        for flag, on in throttled.items():
            if flag != "raw":
                fam.add_metric([flag], 1.0 if on else 0.0)
        yield fam
    yield from accelerators.families(gauge)


def make_registry(services: DeviceServices) -> Any:
    """A registry with the device collector and process CPU/memory (None without prometheus-client)."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector
    except ImportError:
        return None
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
    registry.register(make_collector(services))
    return registry
