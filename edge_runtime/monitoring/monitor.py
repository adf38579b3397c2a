"""The monitoring sink: consumes pipeline FrameResults, writes metric records and events to the outbox.

Per frame it only updates counters and histograms (O(1)); every ``drift.input_every``-th frame gives drift
features from a 64-pixel-wide thumbnail, drift windows are scored at their cadence (monitoring.drift), and once
per ``period_s`` a metric record is built. Records and events go through a bounded queue to a writer thread,
so the pipeline thread never waits on SQLite's fsync. Without an outbox, records are only kept in memory
(``recent``) for health and tests.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.monitoring.collector import Collection
from edge_runtime.monitoring.config import MonitorConfig
from edge_runtime.monitoring.drift import DriftDetector, DriftScore, detector_for, event_body
from edge_runtime.monitoring.features import image_features, output_features, tensor_features
from edge_runtime.monitoring.field import FeedbackError, FieldAccuracy
from edge_runtime.monitoring.metrics import StageLatencies
from edge_runtime.monitoring.per_source import SourceShare, share_baseline
from edge_runtime.monitoring.quality import QualityStats
from edge_runtime.monitoring.reference import Reference
from edge_runtime.monitoring.samples import SampleStore
from edge_runtime.monitoring.system import SystemStats
from edge_runtime.package.manifest import Manifest

if TYPE_CHECKING:
    from edge_runtime.pipeline import FrameResult
    from edge_runtime.sync.mqtt import MqttLink
    from edge_runtime.sync.outbox import Outbox

log = logging.getLogger(__name__)
METRICS_SCHEMA = "metrics/1"
EVENT_SCHEMA = "event/1"
KNOWN_EVENTS = ("drift", "drift_cleared", "drift_baseline_learned", "model_changed", "samples_uploaded",
                "accuracy_decay", "accuracy_recovered", "policy_applied", "policy_rejected")


def _profile_budget_ms(manifest: Manifest | None) -> float:
    """The p95 latency budget of the package's device profile, if known here (else the default)."""
    from edge_runtime.monitoring.metrics import DEFAULT_BUDGET_MS

    if manifest is None or not manifest.profile:
        return DEFAULT_BUDGET_MS
    try:
        from edge_runtime.profiles import load_profile

        return float(load_profile(manifest.profile).budgets.latency_ms_p95)
    except Exception:  # noqa: BLE001 - an unknown profile only loses the bucket centre
        return DEFAULT_BUDGET_MS


class Monitor:
    """``pipeline.add_sink(monitor)``; ``close()`` at the end writes a final record and stops the writer."""

    def __init__(self, config: MonitorConfig, manifest: Manifest | None = None, outbox: Outbox | None = None, *,
                 device_id: str = "device", pipeline_stats: Callable[[], Any] | None = None,
                 on_record: Callable[[], None] | None = None, baseline_file: Path | None = None) -> None:
        self.config, self.outbox = config, outbox
        self.baseline_file = config.drift.baseline_file or baseline_file
        self.device_id, self.pipeline_stats, self.on_record = device_id, pipeline_stats, on_record
        self.shares: dict[str, SourceShare] = {}  # per source name, when one pipeline serves several
        self._budget_ms = config.latency_budget_ms or _profile_budget_ms(manifest)
        self._use_model(manifest)
        self.latency = StageLatencies(self._budget_ms)
        self.samples = SampleStore(config.samples) if config.samples.directory else None
        self.collection = Collection(self.samples, config.samples) if self.samples is not None else None
        self.system = SystemStats() if config.system else None
        self.link: MqttLink | None = None
        self.frames = 0
        self.events = 0
        self.emit_dropped = 0
        self.last_frame_time: float | None = None
        self.last_frame_monotonic: float | None = None
        self.source_label = ""  # the source spec, a label of source metrics (set by the device services)
        self.event_counts: dict[str, int] = dict.fromkeys(KNOWN_EVENTS, 0)
        self.last_record: dict[str, Any] | None = None
        self.recent: deque[tuple[str, dict[str, Any]]] = deque(maxlen=100)
        self._period_start = time.monotonic()
        self._period_frames = 0
        self._queue: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue(maxsize=config.emit_queue)
        self._writer = threading.Thread(target=self._write_loop, name="monitor-writer", daemon=True)
        self._writer.start()

    def _use_model(self, manifest: Manifest | None) -> None:
        """Everything that depends on the model: labels, input kind and colour order, quality, drift reference."""
        config = self.config
        self.manifest = manifest
        self.model = manifest.name if manifest else ""
        self.version = manifest.version if manifest else ""
        spec = manifest.inputs[0] if manifest else None
        self._kind = spec.kind if spec else "image"
        self._flip = bool(spec and spec.color_order in ("RGB", "BGR") and config.frame_order in ("RGB", "BGR")
                          and spec.color_order != config.frame_order)
        self.quality = QualityStats(labels=manifest.outputs.labels if manifest else None)
        labels = manifest.outputs.labels if manifest else None
        self.field = FieldAccuracy(config.field, labels) if config.field.enabled else None
        self.drift = self._make_drift(manifest, self.baseline_file)
        self.shares = {name: self._share(name) for name in self.shares}

    def set_sources(self, names: list[str]) -> None:
        """Several sources on one pipeline: drift, quality, latency and metric records per source from now on."""
        if len(names) > 1:
            self.shares = {name: self._share(name) for name in names}

    def _share(self, name: str) -> SourceShare:
        baseline = share_baseline(self.baseline_file, name)
        labels = self.manifest.outputs.labels if self.manifest else None
        return SourceShare(name, StageLatencies(self._budget_ms), QualityStats(labels=labels),
                           self._make_drift(self.manifest, baseline), baseline)

    def drift_detectors(self) -> list[tuple[str, DriftDetector]]:
        """(source name, detector) for each drift window: one ("", detector), or one per source."""
        if self.shares:
            return [(n, sh.drift) for n, sh in self.shares.items() if sh.drift is not None]
        return [("", self.drift)] if self.drift is not None else []

    def _make_drift(self, manifest: Manifest | None, baseline_file: Path | None) -> DriftDetector | None:
        return detector_for(self.config.drift, manifest, baseline_file)

    def set_reference(self, reference: Reference) -> None:
        """Score drift against ``reference`` from now on (a fleet baseline pushed at run time)."""
        if self.drift is not None:
            self.drift = DriftDetector(self.config.drift, reference, self.model, self.version)
        for share in self.shares.values():
            if share.drift is not None:
                share.drift = DriftDetector(self.config.drift, reference, self.model, self.version)

    def set_model(self, manifest: Manifest) -> None:
        """Follow a model swap (OTA), on the pipeline thread between two frames: the old model's period is closed
        with its own record, then labels, quality and drift restart on the new model and its reference
        statistics, and a ``model_changed`` event says from what."""
        if (manifest.name, manifest.version) == (self.model, self.version) and manifest is self.manifest:
            return
        old = {"name": self.model, "version": self.version}
        if self._period_frames:
            self.report()
        self._use_model(manifest)
        self.event("model_changed", {"from": old})

    # ----------------------------------------------------------------- per frame (pipeline thread)
    def __call__(self, result: FrameResult) -> None:
        self.frames += 1
        self._period_frames += 1
        self.last_frame_time = result.timestamp
        self.last_frame_monotonic = time.monotonic()
        p = result.prediction
        t = p.timings
        stages = {"capture_wait": result.capture_wait_ms, "preprocess": t.preprocess_ms,
                  "inference": t.inference_ms, "postprocess": t.postprocess_ms, "end_to_end": result.end_to_end_ms}
        for stage, ms in stages.items():
            self.latency.add(stage, ms)
        share = self.shares.get(result.source) if self.shares else None
        if share is not None:
            share.frames += 1
            share.period_frames += 1
            share.add_latency(stages)
            share.quality.add(p)
        else:
            self.quality.add(p)
        if self.field is not None:
            self.field.record(result.index, p)
        drift = share.drift if share is not None else self.drift
        if drift is not None and not (share.frames if share is not None else self.frames) % \
                self.config.drift.input_every:
            self._feed_drift(result, drift, share)
        if self.collection is not None and self.collection.selector is not None:  # a signed policy decides
            self.collection.offer(result, self.model, self.version, self.source_label)
        elif self.samples is not None:
            self.samples.offer(result.frame, p.confidence, result.index, result.timestamp, source=result.source)
        if time.monotonic() - self._period_start >= self.config.period_s:
            self.report()

    def _feed_drift(self, result: FrameResult, drift: DriftDetector, share: SourceShare | None) -> None:
        """Every ``input_every``-th frame (of its source): its features (input and answer) into the drift windows."""
        p = result.prediction
        feats: dict[str, float] = {}
        if result.frame is not None:
            feats = image_features(result.frame, self._flip) if self._kind == "image" \
                else tensor_features(result.frame)
        feats.update(output_features(p, drift.top_classes))
        top = p.top
        source = {"source": share.name} if share is not None else {}
        for score in drift.add(feats, top.index if top is not None else None, result.timestamp):
            self._drift_event(score, drift, source)
        if drift.learned is not None:
            self._baseline_learned(drift.learned, share.baseline_file if share else self.baseline_file, source)
            drift.learned = None

    def _baseline_learned(self, ref: Reference, file: Path | None, source: dict[str, str]) -> None:
        if file is not None:
            try:
                ref.save(file)
            except OSError as exc:
                log.warning("drift: cannot keep the device baseline in %s: %s", file, exc)
        log.info("drift: device baseline learned from %d samples %s", ref.samples, source.get("source", ""))
        self.event("drift_baseline_learned", {**source, "reference": ref.describe(),
                                              "file": str(file) if file else None})

    def _drift_event(self, score: DriftScore, drift: DriftDetector, source: dict[str, str]) -> None:
        kind = "drift" if score.drifted else "drift_cleared"
        if score.drifted and self.collection is not None and self.collection.selector is not None:
            self.collection.selector.on_drift()
        (log.warning if score.drifted else log.info)("%s on %s %s: %s", kind, score.feature,
                                                     source.get("source", ""), score.to_dict())
        self.event(kind, {**source, **event_body(score, drift)})

    # ----------------------------------------------------------------- records and events
    def event(self, kind: str, body: dict[str, Any]) -> None:
        """Queue an event (drift, errors, detections of interest) for the outbox."""
        self.events += 1
        self.event_counts[kind] = self.event_counts.get(kind, 0) + 1
        doc = {"schema": EVENT_SCHEMA, "type": kind, "device": self.device_id, "ts": round(time.time(), 3),
               "model": self.model, "version": self.version, **body}
        self._emit("event", doc)

    def report(self) -> dict[str, Any]:
        """Build the metric record of the period that just ended and queue it (with several sources: one record
        per source, labelled ``source``, the device-wide parts in each; returns the last)."""
        now = time.monotonic()
        period = max(now - self._period_start, 1e-9)
        doc: dict[str, Any] = {
            "schema": METRICS_SCHEMA, "device": self.device_id, "ts": round(time.time(), 3),
            "model": self.model, "version": self.version, "period_s": round(period, 3),
        }
        stats = self.pipeline_stats() if self.pipeline_stats is not None else None
        if self.system is not None:
            doc["system"] = self.system.sample()
        if self.samples is not None:
            doc["samples"] = self.samples.summary()
            if self.collection is not None and self.collection.selector is not None:
                doc["samples"]["policy"] = dict(self.collection.selector.counters)
        if self.outbox is not None:
            st = self.outbox.stats()
            doc["outbox"] = {k: st[k] for k in ("records", "bytes", "dropped", "append_failures")}
        field = None
        if self.field is not None:
            decay = self.field.check()
            if decay is not None:
                self.event(*decay)
            field = self.field.snapshot()
        if self.shares:
            per = getattr(stats, "sources", None) or {}
            parts = [share.record_part(per.get(name)) for name, share in self.shares.items()]
            self.latency.period_summary()  # the device-wide period restarts too
        else:
            part = {"frames": self._period_frames, "frames_total": self.frames,
                    "latency_ms": self.latency.period_summary(), "quality": self.quality.snapshot(reset=True)}
            if stats is not None:
                part["pipeline"] = _pipeline_counters(stats)
            if self.drift is not None:
                part["drift"] = self.drift.snapshot()
            parts = [part]
        self._period_start, self._period_frames = now, 0
        for part in parts:
            record = {**doc, **part, "fps": round(part["frames"] / period, 3)}
            if field is not None:
                record["quality"]["field"] = field
            self.last_record = record
            self._emit("metrics", record)
        return self.last_record  # type: ignore[return-value]

    def _emit(self, kind: str, doc: dict[str, Any]) -> None:
        self.recent.append((kind, doc))
        try:
            self._queue.put_nowait((kind, doc))
        except queue.Full:
            self.emit_dropped += 1

    def _write_loop(self) -> None:
        while (item := self._queue.get()) is not None:
            kind, doc = item
            try:
                if self.outbox is not None:
                    self.outbox.append(kind, json.dumps(doc, separators=(",", ":"), default=_jsonable).encode())
                    if self.on_record is not None:
                        self.on_record()
            except Exception:  # the writer must outlive a bad record
                log.exception("monitor could not store a %s record", kind)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until queued records are in the outbox."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        if self._period_frames:
            self.report()
        self.flush()
        self._queue.put(None)
        self._writer.join(5)
        if self.samples is not None:
            self.samples.close()

    # ----------------------------------------------------------------- commands and health
    def attach_link(self, link: MqttLink) -> None:
        """Report broker status in health; samples go out on this link when a signed command asks for them
        (commands are verified in edge_runtime.sync.commands, which calls :meth:`upload_samples`)."""
        self.link = link

    def upload_samples(self, request_id: str, ids: list[str], max_n: int) -> None:
        """Publish the stored samples ``ids`` (or the newest ``max_n``) and report what was sent."""
        if self.samples is None or self.link is None:
            self.event("samples_uploaded", {"request_id": request_id, "uploaded": [], "error": "disabled"})
            return
        wanted = ids or [m["id"] for m in self.samples.list()][-max_n:]
        uploaded, failed = [], []
        topic = self.link.topics.samples(self.device_id)
        for sid in wanted:
            try:
                self.link.publish(topic, self.samples.payload(str(sid), self.device_id))
                uploaded.append(sid)
            except (KeyError, OSError, EdgeRuntimeError) as exc:  # unknown id, unreadable, PayloadTooLarge
                failed.append({"id": sid, "error": str(exc)})
        self.event("samples_uploaded", {"request_id": request_id, "uploaded": uploaded, "failed": failed})

    def feedback(self, doc: Any) -> dict[str, Any]:
        """Labels for predictions (any thread): ``{"labels": [...]}``, a list, or one label; returns counts by
        outcome and the first error. FeedbackError when the document is not labels at all."""
        if self.field is None:
            raise FeedbackError("field accuracy is disabled (monitor.field.enabled)")
        items = doc.get("labels") if isinstance(doc, dict) and "labels" in doc else doc
        items = items if isinstance(items, list) or not isinstance(doc, dict) or "labels" in doc else [doc]
        if not isinstance(items, list) or len(items) > 10_000:
            raise FeedbackError("'labels' is a list of at most 10000 labels")
        out: dict[str, Any] = {"joined": 0, "unknown_id": 0, "duplicate": 0, "invalid": 0}
        for item in items:
            try:
                out[self.field.label(item)] += 1
            except FeedbackError as exc:
                out["invalid"] += 1
                out.setdefault("error", str(exc))
        return out

    def health(self) -> dict[str, Any]:
        """JSON-ready status for /health: source, model, outbox and broker."""
        out: dict[str, Any] = {"model": {"name": self.model, "version": self.version}, "frames": self.frames,
                               "last_frame_age_s": None if self.last_frame_time is None
                               else round(time.time() - self.last_frame_time, 3),
                               "events": self.events, "emit_dropped": self.emit_dropped}
        if self.pipeline_stats is not None:
            out["source"] = _pipeline_counters(self.pipeline_stats())
        out["outbox"] = self.outbox.stats() if self.outbox is not None else None
        out["broker"] = self.link.status() if self.link is not None else {"configured": False}
        if self.drift is not None and not self.shares:
            out["drift"] = {"reference": self.drift.describe_reference(), "alarms": dict(self.drift.state)}
        elif self.shares:
            out["drift"] = {"sources": {n: {"reference": d.describe_reference(), "alarms": dict(d.state)}
                                        for n, d in self.drift_detectors()}}
        if self.samples is not None:
            out["samples"] = self.samples.summary()
        if self.field is not None:
            out["field"] = {**self.field.figures(), "baseline": self.field.baseline, "decayed": self.field.decayed}
        return out


def _pipeline_counters(stats: Any) -> dict[str, Any]:
    return stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
