"""Bounded on-disk capture of inputs for re-training: low-confidence inputs and an optional random share.

The pipeline thread only decides (O(1)) and hands a frame copy to a writer thread through a small bounded
queue (a full queue drops the capture and counts it). Each sample is an image (.png) or array (.npy) plus a
JSON sidecar, both written atomically; the oldest samples are deleted to keep within the size and count caps.
Under a collection policy (monitoring.collector decides, :meth:`SampleStore.put` queues) the writer first runs
the policy's redaction (a failure drops the sample, counted) and marks the sample ``upload: pending`` when it may
leave the device; the uploader (sync.uploader) reads :meth:`pending` and marks what landed with :meth:`mark`.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.fsutil import atomic_write_bytes, atomic_write_text
from edge_runtime.monitoring.config import SampleConfig

log = logging.getLogger(__name__)
SAMPLE_SCHEMA = "sample/1"


class SampleStore:
    def __init__(self, config: SampleConfig) -> None:
        if config.directory is None:
            raise ValueError("SampleStore needs a directory")
        self.config = config
        self.dir = Path(config.directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._rng = random.Random(config.seed)  # noqa: S311 - sampling, not security
        self._queue: queue.Queue[tuple[np.ndarray, dict[str, Any]] | None] = queue.Queue(maxsize=4)
        self._lock = threading.Lock()
        self._index: list[dict[str, Any]] = self._scan()
        self._last_capture = 0.0
        self.captured = 0
        self.dropped = 0
        self.errors = 0
        self.redaction_failed = 0
        self.max_bytes = config.max_bytes
        self.redactor: Callable[[np.ndarray], np.ndarray] | None = None  # set by the monitor from the policy
        self.on_pending: Callable[[], None] | None = None  # called after a sample waiting for upload is kept
        self._thread = threading.Thread(target=self._writer, name="sample-writer", daemon=True)
        self._thread.start()

    def _scan(self) -> list[dict[str, Any]]:
        out = []
        for meta in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(meta.read_text()))
            except (OSError, ValueError):
                continue
        return out

    def offer(self, frame: np.ndarray | None, confidence: float | None, index: int, ts: float,
              source: str = "") -> str | None:
        """Decide whether to keep this input; returns the reason when it was queued for writing. ``source``: the
        name of the source it came from (stored in the sample's metadata when one is given)."""
        if frame is None:
            return None
        cfg = self.config
        reason = None
        if cfg.low_confidence is not None and confidence is not None and confidence < cfg.low_confidence:
            reason = "low_confidence"
        elif cfg.random_rate and self._rng.random() < cfg.random_rate:
            reason = "random"
        now = time.monotonic()
        if reason is None or now - self._last_capture < cfg.min_interval_s:
            return None
        self._last_capture = now
        meta = {"reason": reason, "confidence": confidence, "frame_index": index, "ts": round(ts, 3),
                **({"source": source} if source else {})}
        try:
            self._queue.put_nowait((np.array(frame, copy=True), meta))
        except queue.Full:
            self.dropped += 1
            return None
        return reason

    def put(self, frame: np.ndarray, meta: dict[str, Any]) -> bool:
        """Queue an input another component chose (meta: reason, confidence, class, ...); False when full."""
        try:
            self._queue.put_nowait((np.array(frame, copy=True), meta))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _writer(self) -> None:
        while (item := self._queue.get()) is not None:
            try:
                self._write(*item)
            except (OSError, ValueError) as exc:
                self.errors += 1
                log.error("sample capture failed: %s", exc)
            finally:
                self._queue.task_done()
        self._queue.task_done()

    def _write(self, frame: np.ndarray, meta: dict[str, Any]) -> None:
        sid = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(meta['ts']))}-{meta['frame_index']:08d}"
        if meta.pop("redact", False) and self.redactor is not None:
            from edge_runtime.monitoring.redact import RedactionError

            try:
                frame = self.redactor(frame)
            except RedactionError as exc:  # never keep the unredacted input
                self.redaction_failed += 1
                log.warning("sample %s dropped: %s", sid, exc)
                return
        data, ext = _encode(frame)
        atomic_write_bytes(self.dir / f"{sid}{ext}", data)
        meta = {"id": sid, "file": f"{sid}{ext}", "bytes": len(data), "shape": list(frame.shape),
                "dtype": str(frame.dtype), **meta}
        atomic_write_text(self.dir / f"{sid}.json", json.dumps(meta))
        with self._lock:
            self._index.append(meta)
            self.captured += 1
        self._enforce_caps()
        if meta.get("upload") == "pending" and self.on_pending is not None:
            self.on_pending()  # the uploader sends it now rather than at its next poll

    def _enforce_caps(self) -> None:
        with self._lock:
            while self._index and (len(self._index) > self.config.max_files
                                   or sum(m["bytes"] for m in self._index) > self.max_bytes):
                # the oldest sample that is not waiting for upload goes first (else the oldest)
                i = next((k for k, m in enumerate(self._index) if m.get("upload") != "pending"), 0)
                old = self._index.pop(i)
                for name in (old["file"], f"{old['id']}.json"):
                    (self.dir / name).unlink(missing_ok=True)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until queued captures are written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self) -> None:
        self.flush()
        self._queue.put(None)
        self._thread.join(5)

    def pending(self) -> list[dict[str, Any]]:
        """Samples waiting for upload, oldest first."""
        with self._lock:
            return [dict(m) for m in self._index if m.get("upload") == "pending"]

    def mark(self, sample_id: str, **fields: Any) -> None:
        """Update a sample's sidecar (e.g. ``upload="done"``), atomically; unknown (evicted) ids are ignored."""
        with self._lock:
            meta = next((m for m in self._index if m["id"] == sample_id), None)
            if meta is None:
                return
            meta.update(fields)
            atomic_write_text(self.dir / f"{sample_id}.json", json.dumps(meta))

    def file(self, meta: dict[str, Any]) -> Path:
        return self.dir / meta["file"]

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(m) for m in self._index]

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {"count": len(self._index), "bytes": sum(m["bytes"] for m in self._index),
                    "captured": self.captured, "dropped": self.dropped, "errors": self.errors,
                    "redaction_failed": self.redaction_failed,
                    "pending_upload": sum(1 for m in self._index if m.get("upload") == "pending")}

    def payload(self, sample_id: str, device: str) -> bytes:
        """The upload message of one sample: its metadata and base64 file content."""
        meta = next((m for m in self.list() if m["id"] == sample_id), None)
        if meta is None:
            raise KeyError(sample_id)
        data = (self.dir / meta["file"]).read_bytes()
        doc = {"schema": SAMPLE_SCHEMA, "device": device, "sample": meta,
               "data_b64": base64.b64encode(data).decode()}
        return json.dumps(doc, separators=(",", ":")).encode()


def _encode(frame: np.ndarray) -> tuple[bytes, str]:
    if frame.dtype == np.uint8 and (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))):
        import cv2

        ok, buf = cv2.imencode(".png", frame)
        if ok:
            return buf.tobytes(), ".png"
    import io

    bio = io.BytesIO()
    np.save(bio, frame, allow_pickle=False)
    return bio.getvalue(), ".npy"
