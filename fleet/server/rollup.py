"""Rollups (raw metrics -> 1-minute -> 1-hour buckets per device and version) and retention by age and rows.

Each pass recomputes the buckets of the last ``recompute_s`` from the finer table and upserts them, so records
that arrive late (a device that was offline with its outbox) still land in their bucket while it is in that
window; older late records stay in the raw table only. Retention then deletes rows past each table's age, and the
oldest raw metrics beyond ``raw_max_rows``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import Connection, Engine, Integer, case, cast, delete, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from fleet.server.db import tables as t
from fleet.server.settings import Retention

log = logging.getLogger(__name__)


def _floor(conn: Connection, col: Any, step: int) -> Any:
    if conn.dialect.name == "postgresql":
        return func.floor(col / step) * step
    return cast(col / step, Integer) * step  # SQLite truncates toward zero; times are positive


def rollup(conn: Connection, src: t.Table, dst: t.Table, step: int, since: float) -> None:
    """Recompute ``dst`` buckets of ``step`` seconds starting at or after ``since`` from ``src``."""
    since -= since % step  # whole buckets only: a partial one must not overwrite a complete one
    raw = src is t.metrics
    tcol = src.c.ts if raw else src.c.bucket
    figures = ["frames", "fps", "latency_p50", "latency_p99", "errors", "dropped", "cpu_percent", "temperature_c",
               "confidence_mean", "drift_max"]
    inner = select(src.c.device, _floor(conn, tcol, step).label("bucket"),
                   func.coalesce(src.c.version, "").label("version"),
                   (literal(1) if raw else src.c.n).label("w"), *[src.c[f] for f in figures]) \
        .where(tcol >= since).subquery()
    s = inner.c

    def wavg(c: Any) -> Any:  # mean weighted by record count, over the rows where the figure is known
        return func.sum(c * s.w) / func.nullif(func.sum(case((c.is_(None), 0), else_=s.w)), 0)

    cols = [s.device, s.bucket, s.version, func.sum(s.w).label("n"),
            func.coalesce(func.sum(s.frames), 0).label("frames"), wavg(s.fps).label("fps"),
            wavg(s.latency_p50).label("latency_p50"), func.max(s.latency_p99).label("latency_p99"),
            func.sum(s.errors).label("errors"), func.sum(s.dropped).label("dropped"),
            wavg(s.cpu_percent).label("cpu_percent"), func.max(s.temperature_c).label("temperature_c"),
            wavg(s.confidence_mean).label("confidence_mean"), func.max(s.drift_max).label("drift_max")]
    q = select(*cols).where(literal(True)).group_by(s.device, s.bucket, s.version)
    ins = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(dst)
    names = [c.name for c in cols]
    stmt = ins.from_select(names, q)
    keep = ("device", "bucket", "version")
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keep),
                                            set_={c: stmt.excluded[c] for c in names if c not in keep}))


def retain(conn: Connection, r: Retention, now: float) -> dict[str, int]:
    day = 86400.0
    done = {}
    for table, col, days in ((t.metrics, t.metrics.c.ts, r.raw_days), (t.rollup_1m, t.rollup_1m.c.bucket,
                             r.rollup_1m_days), (t.rollup_1h, t.rollup_1h.c.bucket, r.rollup_1h_days),
                             (t.events, t.events.c.ts, r.events_days),
                             (t.rejected, t.rejected.c.received, r.rejected_days)):
        done[table.name] = conn.execute(delete(table).where(col < now - days * day)).rowcount
    count = conn.execute(select(func.count()).select_from(t.metrics)).scalar_one()
    if count > r.raw_max_rows:
        cutoff = conn.execute(select(t.metrics.c.ts).order_by(t.metrics.c.ts)
                              .offset(count - r.raw_max_rows).limit(1)).scalar_one()
        done["metrics"] += conn.execute(delete(t.metrics).where(t.metrics.c.ts < cutoff)).rowcount
    newest = conn.execute(select(t.rejected.c.id).order_by(t.rejected.c.id.desc())
                          .offset(r.rejected_max_rows).limit(1)).scalar()
    if newest is not None:
        done["rejected"] += conn.execute(delete(t.rejected).where(t.rejected.c.id <= newest)).rowcount
    return done


class Maintenance:
    """Runs rollups and retention every ``interval_s`` on a thread (start/stop with the app)."""

    def __init__(self, engine: Engine, retention: Retention, recompute_s: float = 7200) -> None:
        self.engine, self.retention, self.recompute_s = engine, retention, recompute_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0
        self.last_error: str | None = None

    def run_once(self, now: float | None = None) -> dict[str, int]:
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            rollup(conn, t.metrics, t.rollup_1m, 60, now - self.recompute_s)
            rollup(conn, t.rollup_1m, t.rollup_1h, 3600, now - max(self.recompute_s, 7200) - 3600)
            done = retain(conn, self.retention, now)
        self.passes += 1
        return done

    def _loop(self) -> None:
        while not self._stop.wait(self.retention.interval_s):
            try:
                self.run_once()
            except SQLAlchemyError as exc:
                self.last_error = str(exc).splitlines()[0]
                log.error("rollup/retention pass failed: %s", self.last_error)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fleet-maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
