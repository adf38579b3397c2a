"""The server side of resumable sample uploads (edge_runtime/sync/uploader.py has the protocol).

Chunks are kept on disk under ``{sample store}/partial/{device}/{sample_id}/`` (the offer and one file per
chunk, each written atomically), so a server restart resumes where the last one stopped: the answer to an offer
lists the chunks already held. When the last chunk lands, the whole is checked against the offered sha256 and
becomes an ordinary sample: content-addressed file plus a ``samples`` row, through :class:`Store` in the ingest
batch (so a redelivery is a counted duplicate). Everything a device sends is bounded and checked: ids are topic
segments (no path tricks), sizes and counts are capped, a wrong length or sha256 is refused; each device holds
at most ``max_open`` partial uploads (the oldest is dropped for a new one) and all of them at most
``max_partial_bytes``. A refusal becomes a ``rejected`` row and an ``error`` in the answer, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.sync.topics import check_segment
from fleet.server.db import tables as t
from fleet.server.records import MAX_SAMPLE_BYTES, Parsed, sample_ext

SCHEMA = "sample-upload/1"
MAX_MESSAGE = 256 * 1024
MAX_META = 16 * 1024
_HEX = frozenset("0123456789abcdef")


class Refused(ValueError):
    """An upload message refused; ``retry`` when the device should offer again later (not its fault)."""

    def __init__(self, message: str, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class Outcome:
    """What one upload message gave: the parsed record for the ingest batch and the answer to send."""

    parsed: Parsed
    ack: dict[str, Any] | None
    sample_id: str | None = None
    complete: bool = False


class Uploads:
    def __init__(self, store: Any, prefix: str, max_open: int = 8, max_partial_bytes: int = 256 << 20) -> None:
        self.store, self.prefix = store, prefix
        self.root = Path(store.sample_dir) / "partial"
        self.max_open, self.max_partial_bytes = max_open, max_partial_bytes
        self.counters = {"offers": 0, "chunks": 0, "duplicate_chunks": 0, "completed": 0, "refused": 0}
        self._used: int | None = None  # bytes of partial chunks on disk (scanned now and then, counted between)
        self._scanned = 0.0
        self._held: dict[Path, tuple[int, set[int]]] = {}  # per partial folder: its mtime_ns, the chunks in it

    def is_upload(self, topic: str) -> bool:
        return topic.startswith(f"{self.prefix}/devices/") and topic.endswith("/samples/upload") \
            and topic.count("/") == self.prefix.count("/") + 4

    def ack_topic(self, device: str) -> str:
        return f"{self.prefix}/devices/{device}/samples/ack"

    # ---------------------------------------------------------------- one message
    def handle(self, topic: str, payload: bytes, now: float) -> Outcome:
        device = topic[len(self.prefix) + 9:].split("/", 1)[0]
        parsed = Parsed(device=None)
        sid = None
        try:
            check_segment(device, "device id")
            parsed.device = device
            doc = self._doc(payload)
            sid = check_segment(doc["sample_id"], "sample id") if isinstance(doc.get("sample_id"), str) else None
            if sid is None:
                raise Refused("sample_id missing")
            kind = doc.get("type")
            if kind == "offer":
                return self._offer(device, sid, doc, parsed)
            if kind == "chunk":
                return self._chunk(device, sid, doc, parsed, now)
            raise Refused("type is offer or chunk")
        except OSError as exc:  # the server's disk (full, unwritable): not the device's fault
            return self._refused(parsed, sid, Refused(f"the server cannot keep the upload now: {exc}", retry=True))
        except (Refused, ValueError) as exc:
            return self._refused(parsed, sid, exc)

    def _refused(self, parsed: Parsed, sid: str | None, exc: ValueError) -> Outcome:
        """Counted; a device's fault also becomes a ``rejected`` row; the device is told when it can be."""
        self.counters["refused"] += 1
        retry = isinstance(exc, Refused) and exc.retry
        if not retry:
            parsed.rejected.append(f"sample upload: {str(exc)[:300]}")
        ack = None if parsed.device is None or sid is None else \
            {"schema": SCHEMA, "sample_id": sid, "error": str(exc)[:300], "retry": retry}
        return Outcome(parsed, ack, sid)

    def _doc(self, payload: bytes) -> dict[str, Any]:
        if len(payload) > MAX_MESSAGE:
            raise Refused(f"message of {len(payload)} bytes is over {MAX_MESSAGE}")
        try:
            doc = json.loads(payload)
        except (ValueError, RecursionError) as exc:
            raise Refused("not JSON") from exc
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise Refused(f"expected {SCHEMA}")
        return doc

    def _dir(self, device: str, sid: str) -> Path:
        return self.root / device / sid

    def _stored(self, device: str, sid: str) -> str | None:
        """The sha256 of the stored sample ``sid`` of ``device``, or None."""
        with self.store.engine.connect() as conn:
            return conn.execute(select(t.samples.c.sha256).where(t.samples.c.device == device,
                                                                 t.samples.c.sample_id == sid)).scalar()

    def _offer(self, device: str, sid: str, doc: dict[str, Any], parsed: Parsed) -> Outcome:
        self.counters["offers"] += 1
        sha, size, cb, n, meta = (doc.get(k) for k in ("sha256", "size", "chunk_bytes", "chunks", "meta"))
        if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
            raise Refused("sha256 is 64 lowercase hex digits")
        if not (isinstance(size, int) and 0 < size <= MAX_SAMPLE_BYTES):
            raise Refused(f"size must be 1..{MAX_SAMPLE_BYTES} bytes")
        if not (isinstance(cb, int) and 1024 <= cb <= 128 * 1024 and n == math.ceil(size / cb)):
            raise Refused("chunk_bytes must be 1024..131072 and chunks = ceil(size / chunk_bytes)")
        if not isinstance(meta, dict) or len(json.dumps(meta)) > MAX_META:
            raise Refused(f"meta must be an object of at most {MAX_META} bytes")
        if self._stored(device, sid) is not None:
            return Outcome(parsed, self._answer(sid, complete=True), sid)
        d = self._dir(device, sid)
        old = self._read_offer(d)
        if old is not None and old["sha256"] != sha:
            self._drop(d)  # a different content under the same id: start again
        if not (d / "offer.json").exists():
            self._make_room(device)
            d.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(d / "offer.json", json.dumps({"sha256": sha, "size": size, "chunk_bytes": cb,
                                                             "chunks": n, "meta": meta}).encode())
        return Outcome(parsed, self._answer(sid, have=self._have(d)), sid)

    def _chunk(self, device: str, sid: str, doc: dict[str, Any], parsed: Parsed, now: float) -> Outcome:
        self.counters["chunks"] += 1
        d = self._dir(device, sid)
        offer = self._read_offer(d)
        if offer is None:
            if self._stored(device, sid) is not None:  # a redelivered chunk of a finished sample
                self.counters["duplicate_chunks"] += 1
                return Outcome(parsed, self._answer(sid, complete=True), sid)
            raise Refused("no offer for this sample (offer again)", retry=True)
        i, n, cb = doc.get("index"), offer["chunks"], offer["chunk_bytes"]
        if doc.get("sha256") != offer["sha256"]:
            raise Refused("chunk of another content than offered (offer again)", retry=True)
        if not isinstance(i, int) or not 0 <= i < n:
            raise Refused(f"index must be 0..{n - 1}")
        want = cb if i < n - 1 else offer["size"] - cb * (n - 1)
        data_b64 = doc.get("data_b64")
        if not isinstance(data_b64, str) or len(data_b64) > (want + 2) // 3 * 4 + 4:
            raise Refused("data_b64 missing or too long")
        try:
            data = base64.b64decode(data_b64, validate=True)
        except (ValueError, binascii.Error) as exc:
            raise Refused(f"data_b64: {exc}") from exc
        if len(data) != want:
            raise Refused(f"chunk {i} is {len(data)} bytes, expected {want}")
        path = d / f"c{i:05d}"
        held = self._held_set(d)
        if i in held or path.exists():  # (another instance sharing the folder may have written it)
            self.counters["duplicate_chunks"] += 1
            held.add(i)
        else:
            if self._partial_bytes() + len(data) > self.max_partial_bytes:
                raise Refused("the server's partial-upload space is full (try later)", retry=True)
            atomic_write_bytes(path, data)
            self._used = (self._used or 0) + len(data)
            held.add(i)
            self._held[d] = (d.stat().st_mtime_ns, held)
        have = self._have(d)
        if len(have) < n:
            return Outcome(parsed, self._answer(sid, have=have), sid)
        return self._complete(device, sid, d, offer, parsed, now)

    def _complete(self, device: str, sid: str, d: Path, offer: dict[str, Any], parsed: Parsed,
                  now: float) -> Outcome:
        blob = b"".join((d / f"c{i:05d}").read_bytes() for i in range(offer["chunks"]))
        sha = hashlib.sha256(blob).hexdigest()
        if sha != offer["sha256"]:
            self._drop(d)
            raise Refused(f"sha256 of the assembled sample is {sha}, offered {offer['sha256']}")
        meta = offer["meta"]
        parsed.records = 1
        parsed.sample_blob = blob
        conf = meta.get("confidence")
        parsed.add("samples", {
            "device": device, "sample_id": sid, "ts": meta.get("ts") if isinstance(meta.get("ts"), (int, float))
            else None, "received": now, "sha256": sha, "bytes": len(blob),
            "ext": sample_ext(meta.get("file")), "reason": str(meta.get("reason"))[:64] if meta.get("reason")
            else None, "confidence": float(conf) if isinstance(conf, (int, float)) else None,
            "meta": {**meta, "upload": "chunked"}})
        return Outcome(parsed, None, sid, complete=True)

    def finish(self, out: Outcome) -> dict[str, Any] | None:
        """After the batch committed: a completed sample's answer (stored, or refused by the store)."""
        if not out.complete:
            return out.ack
        assert out.parsed.device is not None and out.sample_id is not None
        self._drop(self._dir(out.parsed.device, out.sample_id))
        if "samples" in out.parsed.rows:
            self.counters["completed"] += 1
            return self._answer(out.sample_id, complete=True)
        self.counters["refused"] += 1
        reason = out.parsed.rejected[-1] if out.parsed.rejected else "refused by the sample store"
        return {"schema": SCHEMA, "sample_id": out.sample_id, "error": reason[:300], "retry": False}

    # ---------------------------------------------------------------- partial state
    @staticmethod
    def _read_offer(d: Path) -> dict[str, Any] | None:
        try:
            return json.loads((d / "offer.json").read_bytes())
        except (OSError, ValueError):
            return None

    def _have(self, d: Path) -> list[int]:
        return sorted(self._held_set(d))

    def _held_set(self, d: Path) -> set[int]:
        """The chunk indices in a partial folder, listed again only when the folder changed behind this instance
        (listing it per chunk made a sample of n chunks cost n^2, and a flood of one chunk a listing each)."""
        try:
            mtime = d.stat().st_mtime_ns
        except FileNotFoundError:
            self._held.pop(d, None)
            return set()
        cached = self._held.get(d)
        if cached is None or cached[0] != mtime:
            if len(self._held) > 100_000:  # folders removed by another instance: forget them all now and then
                self._held.clear()
            cached = self._held[d] = (mtime, {int(p.name[1:]) for p in d.glob("c[0-9]*") if p.name[1:].isdigit()})
        return cached[1]

    def _partial_bytes(self) -> int:
        """Partial chunk bytes on disk: a scan at most every 30 s (finished and dropped uploads free space),
        counted up by each chunk written in between, so a flood of chunks costs no scan per message."""
        now = time.monotonic()
        if self._used is None or now - self._scanned > 30:
            self._used = sum(p.stat().st_size for p in self.root.glob("*/*/c*")) if self.root.exists() else 0
            self._scanned = now
        return self._used

    def _make_room(self, device: str) -> None:
        """At most ``max_open`` partial uploads per device: the least recently touched goes first."""
        base = self.root / device
        if not base.is_dir():
            return
        open_ = sorted((p for p in base.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for stale in open_[:max(0, len(open_) - self.max_open + 1)]:
            self._drop(stale)

    def _drop(self, d: Path) -> None:
        """Remove a partial upload, uncounting its chunks at once (else dropped chunks would fill the bound for
        every device until the next scan)."""
        freed = sum(p.stat().st_size for p in d.glob("c[0-9]*")) if d.is_dir() else 0
        shutil.rmtree(d, ignore_errors=True)
        self._held.pop(d, None)
        if self._used is not None:
            self._used = max(0, self._used - freed)

    @staticmethod
    def _answer(sid: str, have: list[int] | None = None, complete: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {"schema": SCHEMA, "sample_id": sid, "ts": round(time.time(), 3)}
        if complete:
            doc["complete"] = True
        else:
            doc["have"] = have or []
        return doc
