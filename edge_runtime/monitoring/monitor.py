"""The monitoring sink: consumes pipeline FrameResults, writes metric records and events to the outbox.

Per frame it only updates counters and histograms (O(1)); input statistics come from a strided view of the
frame, drift is scored every ``drift.every_n_frames`` frames, and once per ``period_s`` a metric record is
built. Records and events go through a bounded queue to a writer thread, so the pipeline thread never waits
on SQLite's fsync. Without an outbox, records are only kept in memory (``recent``) for health and tests.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.monitoring.config import MonitorConfig
from edge_runtime.monitoring.drift import DriftDetector, DriftScore
from edge_runtime.monitoring.metrics import StageLatencies
from edge_runtime.monitoring.quality import QualityStats
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


class Monitor:
    """``pipeline.add_sink(monitor)``; ``close()`` at the end writes a final record and stops the writer."""

    def __init__(self, config: MonitorConfig, manifest: Manifest | None = None, outbox: Outbox | None = None, *,
                 device_id: str = "device", pipeline_stats: Callable[[], Any] | None = None,
                 on_record: Callable[[], None] | None = None) -> None:
        self.config, self.outbox = config, outbox
        self.device_id, self.pipeline_stats, self.on_record = device_id, pipeline_stats, on_record
        self._use_model(manifest)
        self.latency = StageLatencies()
        self.samples = SampleStore(config.samples) if config.samples.directory else None
        self.system = SystemStats() if config.system else None
        self.link: MqttLink | None = None
        self.frames = 0
        self.events = 0
        self.emit_dropped = 0
        self.last_frame_time: float | None = None
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
        ref = manifest.reference if manifest else None
        self.drift = DriftDetector(ref, config.drift) if ref is not None and config.drift.enabled else None

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
        p = result.prediction
        t = p.timings
        lat = self.latency
        lat.add("capture_wait", result.capture_wait_ms)
        lat.add("preprocess", t.preprocess_ms)
        lat.add("inference", t.inference_ms)
        lat.add("postprocess", t.postprocess_ms)
        lat.add("end_to_end", result.end_to_end_ms)
        self.quality.add(p)
        if self.drift is not None:
            self._feed_drift(result)
        if self.samples is not None:
            self.samples.offer(result.frame, p.confidence, result.index, result.timestamp)
        if time.monotonic() - self._period_start >= self.config.period_s:
            self.report()

    def _feed_drift(self, result: FrameResult) -> None:
        assert self.drift is not None
        p = result.prediction
        top = p.top
        self.drift.add_output(p.confidence, top.index if top is not None else None)
        cfg = self.config.drift
        if result.frame is not None and self.frames % cfg.input_every == 0:
            if self._kind == "image":
                self.drift.add_image_means(self._image_means(result.frame, cfg.input_stride))
            else:
                self.drift.add_input(result.frame, self._kind)
        if self.frames % cfg.every_n_frames == 0:
            for score, changed in self.drift.evaluate():
                if changed:
                    self._drift_event(score)

    def _image_means(self, frame: np.ndarray, stride: int) -> tuple[float, ...]:
        """Per-channel means from a nearest-neighbour thumbnail (cv2: a few microseconds, unlike numpy views)."""
        h, w = frame.shape[:2]
        small = cv2.resize(frame, (max(1, w // stride), max(1, h // stride)), interpolation=cv2.INTER_NEAREST)
        channels = 1 if small.ndim == 2 else min(small.shape[2], 3)
        means = cv2.mean(small)[:channels]
        return means[::-1] if self._flip and channels == 3 else means

    def _drift_event(self, score: DriftScore) -> None:
        kind = "drift" if score.drifted else "drift_cleared"
        (log.warning if score.drifted else log.info)("%s on %s: %s", kind, score.feature, score.to_dict())
        self.event(kind, {"feature": score.feature, "scores": score.to_dict(),
                          "thresholds": {"psi": self.config.drift.psi_threshold, "ks_alpha": self.config.drift.ks_alpha,
                                         "channel_shift": self.config.drift.channel_shift_threshold}})

    # ----------------------------------------------------------------- records and events
    def event(self, kind: str, body: dict[str, Any]) -> None:
        """Queue an event (drift, errors, detections of interest) for the outbox."""
        self.events += 1
        doc = {"schema": EVENT_SCHEMA, "type": kind, "device": self.device_id, "ts": round(time.time(), 3),
               "model": self.model, "version": self.version, **body}
        self._emit("event", doc)

    def report(self) -> dict[str, Any]:
        """Build the metric record of the period that just ended and queue it."""
        now = time.monotonic()
        period = max(now - self._period_start, 1e-9)
        doc: dict[str, Any] = {
            "schema": METRICS_SCHEMA, "device": self.device_id, "ts": round(time.time(), 3),
            "model": self.model, "version": self.version, "period_s": round(period, 3),
            "frames": self._period_frames, "frames_total": self.frames,
            "fps": round(self._period_frames / period, 3), "latency_ms": self.latency.period_summary(),
            "quality": self.quality.snapshot(reset=True),
        }
        if self.pipeline_stats is not None:
            doc["pipeline"] = _pipeline_counters(self.pipeline_stats())
        if self.system is not None:
            doc["system"] = self.system.sample()
        if self.drift is not None:
            doc["drift"] = self.drift.snapshot()
        if self.samples is not None:
            doc["samples"] = self.samples.summary()
        if self.outbox is not None:
            st = self.outbox.stats()
            doc["outbox"] = {k: st[k] for k in ("records", "bytes", "dropped", "append_failures")}
        self._period_start, self._period_frames = now, 0
        self.last_record = doc
        self._emit("metrics", doc)
        return doc

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
        if self.drift is not None:
            out["drift"] = {k: v for k, v in self.drift.state.items()}
        if self.samples is not None:
            out["samples"] = self.samples.summary()
        return out


def _pipeline_counters(stats: Any) -> dict[str, Any]:
    return stats.to_dict() if hasattr(stats, "to_dict") else dict(stats)


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
