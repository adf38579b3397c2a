"""The durable store-and-forward outbox: every metric record and event lands here before it goes to MQTT.

SQLite in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is fsynced, so a record that
:meth:`Outbox.append` accepted survives a power cut (``NORMAL`` would survive a process crash but may lose the
last commits on power loss; it is offered for flash that must be spared, at that documented cost). Appends are
rare (one metric record per period, a few events), so the fsync per commit is cheap where it matters.

Ids are SQLite ``AUTOINCREMENT`` keys: strictly increasing and never reused, so they are this device's record
sequence. Each outbox file also has a random ``epoch``: if a corrupt file has to be set aside, the fresh one
restarts its ids under a new epoch, and (epoch, id) stays unique. The outbox is bounded in bytes and age; it
drops the oldest records first and counts what it dropped. A write that fails (disk full, I/O error) is
refused, counted and reported in :meth:`stats`; it never raises into the inference loop.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.fsutil import fsync_dir

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    created REAL NOT NULL,
    size INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class OutboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: Path = Field(description="SQLite file of the outbox (its folder must be on persistent storage).")
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, description="Payload bytes kept; oldest dropped first.")
    max_age_s: float = Field(default=7 * 24 * 3600, gt=0, description="Records older than this are dropped.")
    max_record_bytes: int = Field(default=128 * 1024, ge=256, description="Larger records are refused.")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="FULL survives power cuts; NORMAL only process crashes (fewer fsyncs)."
    )


@dataclass(frozen=True)
class Record:
    id: int
    kind: str
    created: float
    payload: bytes


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    msg = str(exc).lower()
    return any(s in msg for s in ("malformed", "not a database", "file is encrypted", "corrupt"))


class Outbox:
    """Thread-safe: the pipeline thread appends, the forwarder thread reads and deletes."""

    def __init__(self, config: OutboxConfig) -> None:
        self.config = config
        self.path = Path(config.path)
        self._lock = threading.Lock()
        self.dropped = 0  # records dropped by the byte or age bound (persisted in meta)
        self.refused_oversize = 0
        self.append_failures = 0
        self.last_error: str | None = None
        self.set_aside: list[str] = []
        self._last_prune = 0.0
        self._open()

    # ----------------------------------------------------------------- opening and recovery
    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise
            self._set_aside(exc)
            self._connect()

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.config.synchronous}")
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed (quick_check: {row})")
            db.executescript(_SCHEMA)
            epoch = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            if epoch is None:
                db.execute("INSERT INTO meta VALUES ('epoch', ?), ('dropped', '0')", (uuid.uuid4().hex[:16],))
                epoch = db.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()
            self.epoch = str(epoch[0])
            self.dropped = int(db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0])
            self._bytes = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0])
        except BaseException:
            db.close()
            raise
        self._db = db

    def _set_aside(self, exc: Exception) -> None:
        """Rename a corrupt file (and its WAL/SHM) to *.corrupt-<ts> so a fresh outbox can start."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        log.error("outbox %s is corrupt (%s); set aside as %s, starting a fresh one", self.path, exc, target.name)
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.replace(Path(f"{target}{suffix}"))
        fsync_dir(self.path.parent)
        self.set_aside.append(target.name)
        self.last_error = f"corrupt outbox set aside as {target.name}"

    def _recover_if_corrupt(self, exc: sqlite3.DatabaseError) -> None:
        if _is_corruption(exc):
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._set_aside(exc)
            self._connect()

    # ----------------------------------------------------------------- writing
    def append(self, kind: str, payload: bytes) -> int | None:
        """Store one record; returns its id once durable, or None if refused (oversized or a write error)."""
        ids = self.append_many([(kind, payload)])
        return ids[0] if ids else None

    def append_many(self, items: list[tuple[str, bytes]]) -> list[int]:
        """Store records in one transaction (one fsync). Returns their ids, or [] if the write failed."""
        keep = []
        for kind, payload in items:
            if len(payload) > self.config.max_record_bytes:
                self.refused_oversize += 1
                log.warning("outbox refused a %s record of %d bytes (max %d)", kind, len(payload),
                            self.config.max_record_bytes)
            else:
                keep.append((kind, payload))
        if not keep:
            return []
        now = time.time()
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                ids = [
                    int(self._db.execute(
                        "INSERT INTO records (kind, created, size, payload) VALUES (?, ?, ?, ?)",
                        (kind, now, len(payload), payload),
                    ).lastrowid or 0)
                    for kind, payload in keep
                ]
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._rollback()
                self.append_failures += len(keep)
                self.last_error = f"outbox write failed: {exc}"
                log.error("%s (%d records refused)", self.last_error, len(keep))
                self._recover_if_corrupt(exc)
                return []
            self._bytes += sum(len(p) for _, p in keep)
            if self._bytes > self.config.max_bytes or now - self._last_prune > 60:
                self._prune(now)
        return ids

    def _rollback(self) -> None:
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _prune(self, now: float) -> None:
        """Drop records older than max_age_s, then the oldest until under max_bytes (lock held)."""
        self._last_prune = now
        try:
            self._db.execute("BEGIN IMMEDIATE")
            n = self._db.execute("DELETE FROM records WHERE created < ?", (now - self.config.max_age_s,)).rowcount
            total = int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM records").fetchone()[0])
            excess = total - self.config.max_bytes
            if excess > 0:
                cut, freed = None, 0
                for rid, size in self._db.execute("SELECT id, size FROM records ORDER BY id"):
                    freed += size
                    cut = rid
                    if freed >= excess:
                        break
                n += self._db.execute("DELETE FROM records WHERE id <= ?", (cut,)).rowcount
                total -= freed
            if n:
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'dropped'", (str(self.dropped + n),))
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self._rollback()
            self.last_error = f"outbox prune failed: {exc}"
            log.error(self.last_error)
            return
        if n:
            self.dropped += n
            log.warning("outbox dropped %d oldest records (bounds: %d bytes, %.0f s)", n, self.config.max_bytes,
                        self.config.max_age_s)
        self._bytes = total

    # ----------------------------------------------------------------- reading and acknowledging
    def pending(
        self, after_id: int = 0, limit: int = 500, max_bytes: int | None = None, overhead: int = 0
    ) -> list[Record]:
        """Oldest records with id > after_id, at most ``limit`` and (beyond the first) ``max_bytes``, counting
        ``overhead`` bytes per record besides its payload (what wrapping it in a batch message adds)."""
        out: list[Record] = []
        total = 0
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, kind, created, payload FROM records WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                self.last_error = f"outbox read failed: {exc}"
                self._recover_if_corrupt(exc)
                return []
        for rid, kind, created, payload in rows:
            total += len(payload) + overhead
            if out and max_bytes is not None and total > max_bytes:
                break
            out.append(Record(int(rid), str(kind), float(created), bytes(payload)))
        return out

    def delete_range(self, first_id: int, last_id: int) -> int:
        """Delete records first_id..last_id (after the broker acknowledged them); returns how many."""
        with self._lock:
            try:
                size = self._db.execute(
                    "SELECT COALESCE(SUM(size), 0) FROM records WHERE id BETWEEN ? AND ?", (first_id, last_id)
                ).fetchone()[0]
                n = self._db.execute("DELETE FROM records WHERE id BETWEEN ? AND ?", (first_id, last_id)).rowcount
            except sqlite3.DatabaseError as exc:
                self.last_error = f"outbox delete failed: {exc}"
                log.error(self.last_error)
                return 0
            self._bytes -= int(size)
            return int(n)

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM records").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        """JSON-ready state for metrics and the health endpoint."""
        with self._lock:
            try:
                count, oldest = self._db.execute("SELECT COUNT(*), MIN(created) FROM records").fetchone()
            except sqlite3.DatabaseError:
                count, oldest = None, None
        return {
            "path": str(self.path),
            "epoch": self.epoch,
            "records": count,
            "bytes": self._bytes,
            "oldest_age_s": None if oldest is None else round(time.time() - oldest, 1),
            "dropped": self.dropped,
            "refused_oversize": self.refused_oversize,
            "append_failures": self.append_failures,
            "set_aside": list(self.set_aside),
            "last_error": self.last_error,
        }

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
