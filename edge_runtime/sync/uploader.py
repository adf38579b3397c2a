"""Resumable, chunked sample uploads over MQTT into the fleet server's sample store, within a bandwidth cap.

Protocol (JSON on ``devices/{id}/samples/upload``, the server answers on ``devices/{id}/samples/ack``):

1. ``{"schema": "sample-upload/1", "type": "offer", "sample_id", "sha256", "size", "chunk_bytes", "chunks",
   "meta"}``: the server answers with what it already holds (``have``: chunk indices), or ``complete`` when
   the sample is stored, or an ``error`` (refused: too large, store full, ...).
2. ``{"type": "chunk", "sample_id", "sha256", "index", "data_b64"}`` for each chunk it lacks, at most
   ``WINDOW`` unacknowledged at a time; each stored chunk is acknowledged with the updated ``have``.
3. When the last chunk lands the server checks the sha256 of the whole and answers ``complete``.

An answer that does not come within ``ack_timeout_s`` ends the attempt; the next one starts with an offer, so
after a link drop or a restart of either side only the chunks the server lacks are sent again. The queue is
the sample store itself (sidecars marked ``upload: pending``), bounded by its caps and persisted. The daily byte
budget is kept in a state file so a restart does not reset it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.fsutil import atomic_write_text
from edge_runtime.monitoring.collect import UploadRule
from edge_runtime.monitoring.samples import SampleStore

log = logging.getLogger(__name__)
SCHEMA = "sample-upload/1"
WINDOW = 4  # chunks in flight without an acknowledgement
MAX_ACK_BYTES = 64 * 1024


class SampleUploader:
    """A thread that uploads pending samples while connected and allowed; ``limits()`` gives the current caps
    (None: uploading is not allowed now)."""

    def __init__(self, store: SampleStore, link: Any, device: str, state_file: Path,
                 limits: Callable[[], UploadRule | None], ack_timeout_s: float = 5.0) -> None:
        self.store, self.link, self.device, self.limits = store, link, device, limits
        self.state_file, self.ack_timeout_s = Path(state_file), ack_timeout_s
        self.topic = link.topics.sample_upload(device)
        self._acks: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._free_at = 0.0  # token bucket: when the next byte may go
        self._day, self._day_bytes = self._load_day()
        self._sent: dict[str, set[int]] = {}  # chunk indices sent per sample in this process
        self._backoff = 1.0
        self.counters = {"samples_uploaded": 0, "samples_refused": 0, "chunks_sent": 0, "chunks_resent": 0,
                         "bytes_sent": 0, "attempts": 0, "ack_timeouts": 0, "bad_acks": 0}
        self._thread = threading.Thread(target=self._loop, name="sample-uploader", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> SampleUploader:
        self.link.subscribe(self.link.topics.sample_ack(self.device), self.on_ack)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(10)

    def wake(self) -> None:
        self._wake.set()

    # ---------------------------------------------------------------- acknowledgements (network thread)
    def on_ack(self, _topic: str, payload: bytes) -> None:
        try:
            if len(payload) > MAX_ACK_BYTES:
                raise ValueError("too large")
            doc = json.loads(payload)
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("sample_id"), str):
                raise ValueError("not a sample-upload/1 acknowledgement")
            have = doc.get("have", [])
            if not isinstance(have, list) or not all(isinstance(i, int) for i in have):
                raise ValueError("have is a list of chunk indices")
        except (ValueError, RecursionError):
            self.counters["bad_acks"] += 1
            return
        with self._cond:
            self._acks[doc["sample_id"]] = doc
            self._cond.notify_all()

    def _wait_ack(self, sid: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        deadline = time.monotonic() + self.ack_timeout_s
        with self._cond:
            while not self._stop.is_set():
                ack = self._acks.get(sid)
                if ack is not None and done(ack):
                    return ack
                left = deadline - time.monotonic()
                if left <= 0:
                    self.counters["ack_timeouts"] += 1
                    return None
                self._cond.wait(left)
        return None

    # ---------------------------------------------------------------- bandwidth
    def _load_day(self) -> tuple[str, int]:
        try:
            doc = json.loads(self.state_file.read_text())
            return str(doc["day"]), int(doc["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return time.strftime("%Y-%m-%d", time.gmtime()), 0

    def _spend(self, n: int, rule: UploadRule) -> bool:
        """Wait for the bandwidth cap to allow ``n`` bytes; False when the day's budget is spent (or stopping)."""
        today = time.strftime("%Y-%m-%d", time.gmtime())
        if today != self._day:
            self._day, self._day_bytes = today, 0
        if self._day_bytes + n > rule.bytes_per_day:
            return False
        now = time.monotonic()
        if self._free_at > now and self._stop.wait(self._free_at - now):
            return False
        self._free_at = max(now, self._free_at) + n / rule.bytes_per_s
        self._day_bytes += n
        return True

    def _save_day(self) -> None:
        try:
            atomic_write_text(self.state_file, json.dumps({"day": self._day, "bytes": self._day_bytes}))
        except OSError as exc:
            log.warning("cannot keep the upload budget in %s: %s", self.state_file, exc)

    # ---------------------------------------------------------------- the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            rule = self.limits()
            pending = self.store.pending() if rule is not None and self.link.connected else []
            if not pending:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for meta in pending:
                if self._stop.is_set() or not self.link.connected:
                    break
                try:
                    ok = self._upload(meta, rule)  # type: ignore[arg-type]
                except OSError as exc:  # the file went away (evicted by the caps): nothing to upload
                    log.info("sample %s not uploaded: %s", meta["id"], exc)
                    self.store.mark(meta["id"], upload="gone")
                    continue
                if not ok:  # no answer, a cap, or "try later": wait longer each time (1 s .. 60 s)
                    self._stop.wait(self._backoff)
                    self._backoff = min(60.0, self._backoff * 2)
                    break
                self._backoff = 1.0

    def _publish(self, doc: dict[str, Any], rule: UploadRule) -> bool:
        payload = json.dumps(doc, separators=(",", ":")).encode()
        if not self._spend(len(payload), rule):
            return False
        try:
            self.link.publish(self.topic, payload, qos=1)
        except EdgeRuntimeError as exc:  # PayloadTooLarge: the broker limit is below the chunk size
            log.error("sample upload: %s", exc)
            return False
        self.counters["bytes_sent"] += len(payload)
        return True

    def _upload(self, meta: dict[str, Any], rule: UploadRule) -> bool:
        """One attempt at one sample; True when it is done (stored or refused), False to retry later."""
        sid = meta["id"]
        data = self.store.file(meta).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        size, cb = len(data), rule.chunk_bytes
        n = max(1, math.ceil(size / cb))
        self.counters["attempts"] += 1
        with self._cond:
            self._acks.pop(sid, None)
        side = {k: v for k, v in meta.items() if k not in ("upload",)}
        offer = {"schema": SCHEMA, "type": "offer", "sample_id": sid, "sha256": sha, "size": size,
                 "chunk_bytes": cb, "chunks": n, "meta": side}
        if not self._publish(offer, rule):
            return False
        ack = self._wait_ack(sid, lambda a: True)
        sent = self._sent.setdefault(sid, set())
        while ack is not None:
            if ack.get("retry"):
                log.info("sample %s: the server asks to offer again later: %s", sid, ack.get("error"))
                return False
            if self._finished(sid, ack):
                self._sent.pop(sid, None)
                return True
            have = set(ack.get("have", ()))
            batch = [i for i in range(n) if i not in have][:WINDOW]
            for i in batch:
                chunk = {"schema": SCHEMA, "type": "chunk", "sample_id": sid, "sha256": sha, "index": i,
                         "data_b64": base64.b64encode(data[i * cb:(i + 1) * cb]).decode()}
                if not self._publish(chunk, rule):
                    self._save_day()
                    return False
                self.counters["chunks_sent"] += 1
                self.counters["chunks_resent"] += i in sent
                sent.add(i)
            self._save_day()
            target = len(have) + len(batch)
            ack = self._wait_ack(sid, lambda a, t=target: bool(a.get("complete")) or "error" in a
                                 or len(set(a.get("have", ()))) >= t)
        return False

    def _finished(self, sid: str, ack: dict[str, Any]) -> bool:
        if ack.get("complete"):
            self.store.mark(sid, upload="done", uploaded=round(time.time(), 3))
            self.counters["samples_uploaded"] += 1
            return True
        if "error" in ack:
            self.store.mark(sid, upload="refused", refused=str(ack["error"])[:200])
            self.counters["samples_refused"] += 1
            log.warning("sample %s refused by the server: %s", sid, ack["error"])
            return True
        return False

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "day_bytes": self._day_bytes, "pending": len(self.store.pending())}
