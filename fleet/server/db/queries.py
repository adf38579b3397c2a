"""The read side: one function per question the API, the dashboard and the CLI ask (routers stay thin)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Connection, and_, case, desc, func, or_, select

from fleet.server.db import tables as t

# Metric columns a series may ask for (raw and rollups share these names).
SERIES_FIELDS = ("fps", "latency_p50", "latency_p99", "errors", "dropped", "cpu_percent", "temperature_c",
                 "confidence_mean", "drift_max")
FAILED_STATES = ("failed", "rolled_back")


def _attention() -> Any:
    """Lower sorts first: failed update, drifting, offline, then the rest."""
    d = t.devices.c
    return case((d.update_state.in_(FAILED_STATES), 0), (d.drifting.is_(True), 1), (d.online.is_(False), 2),
                else_=3)


def _device_filter(q: Any, state: str | None, version: str | None, search: str | None) -> Any:
    d = t.devices.c
    if state == "online":
        q = q.where(d.online.is_(True))
    elif state == "offline":
        q = q.where(d.online.is_(False))
    elif state == "drifting":
        q = q.where(d.drifting.is_(True))
    elif state == "failed":
        q = q.where(d.update_state.in_(FAILED_STATES))
    if version:
        q = q.where(or_(d.version == version, d.serving.like(f"%-{version}")))
    if search:
        q = q.where(d.id.like(f"%{search}%"))
    return q


def devices(conn: Connection, *, state: str | None = None, version: str | None = None, search: str | None = None,
            limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """(total matching, one page of devices), those needing attention first."""
    d = t.devices
    total = conn.execute(_device_filter(select(func.count()).select_from(d), state, version, search)).scalar_one()
    q = _device_filter(select(d), state, version, search).order_by(_attention(), d.c.id).limit(limit).offset(offset)
    return int(total), [dict(r._mapping) for r in conn.execute(q)]


def device(conn: Connection, device_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(t.devices).where(t.devices.c.id == device_id)).first()
    return None if row is None else dict(row._mapping)


def overview(conn: Connection) -> dict[str, Any]:
    """Counts by state and by version, plus the devices needing attention (for the dashboard and /metrics)."""
    d = t.devices.c
    row = conn.execute(select(
        func.count(), func.sum(case((d.online.is_(True), 1), else_=0)),
        func.sum(case((d.drifting.is_(True), 1), else_=0)),
        func.sum(case((d.update_state.in_(FAILED_STATES), 1), else_=0)),
    ).select_from(t.devices)).one()
    versions = conn.execute(
        select(d.model, d.version, func.count(), func.sum(case((d.online.is_(True), 1), else_=0)))
        .group_by(d.model, d.version).order_by(desc(func.count()))).all()
    attention = conn.execute(select(t.devices).where(or_(d.update_state.in_(FAILED_STATES), d.drifting.is_(True),
                                                         d.online.is_(False)))
                             .order_by(_attention(), desc(d.last_seen)).limit(20)).all()
    return {"devices": int(row[0]), "online": int(row[1] or 0), "drifting": int(row[2] or 0),
            "failed_updates": int(row[3] or 0),
            "versions": [{"model": m, "version": v, "devices": int(n), "online": int(o or 0)}
                         for m, v, n, o in versions],
            "attention": [dict(r._mapping) for r in attention]}


def _table_for(since: float, until: float, step: str) -> Any:
    if step == "auto":
        span = until - since
        step = "raw" if span <= 6.1 * 3600 else "1m" if span <= 3.1 * 86400 else "1h"
    return {"raw": t.metrics, "1m": t.rollup_1m, "1h": t.rollup_1h}[step], step


def series(conn: Connection, *, device: str | None = None, version: str | None = None, since: float | None = None,
           until: float | None = None, step: str = "auto", limit: int = 2000) -> dict[str, Any]:
    """Metric points of one device, or of all devices on one version (averaged per bucket)."""
    until = time.time() if until is None else until
    since = until - 3600 if since is None else since
    table, step = _table_for(since, until, step)
    tcol = table.c.ts if table is t.metrics else table.c.bucket
    cond = [tcol >= since, tcol <= until]
    if device is not None:
        cond.append(table.c.device == device)
    if version is not None:
        cond.append(table.c.version == version)
    if device is not None:
        q = select(tcol.label("ts"), *[table.c[f] for f in SERIES_FIELDS]).where(and_(*cond)).order_by(tcol)
    else:
        q = select(tcol.label("ts"), *[func.avg(table.c[f]).label(f) for f in SERIES_FIELDS]) \
            .where(and_(*cond)).group_by(tcol).order_by(tcol)
    rows = conn.execute(q.limit(limit)).all()
    return {"step": step, "since": since, "until": until, "fields": list(SERIES_FIELDS),
            "points": [dict(r._mapping) for r in rows]}


def events(conn: Connection, *, device: str | None = None, type_: str | None = None, since: float | None = None,
           limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    e = t.events.c
    cond = []
    if device:
        cond.append(e.device == device)
    if type_:
        cond.append(e.type == type_)
    if since is not None:
        cond.append(e.ts >= since)
    where = and_(True, *cond)
    total = conn.execute(select(func.count()).select_from(t.events).where(where)).scalar_one()
    rows = conn.execute(select(e.device, e.record_id, e.ts, e.type, e.model, e.version, e.feature, e.data)
                        .where(where).order_by(desc(e.ts)).limit(limit).offset(offset)).all()
    return int(total), [dict(r._mapping) for r in rows]


def samples(conn: Connection, *, device: str | None = None, limit: int = 50, offset: int = 0
            ) -> tuple[int, list[dict[str, Any]]]:
    s = t.samples.c
    where = and_(True, s.device == device) if device else and_(True)
    total = conn.execute(select(func.count()).select_from(t.samples).where(where)).scalar_one()
    rows = conn.execute(select(s.device, s.sample_id, s.ts, s.received, s.sha256, s.bytes, s.ext, s.reason,
                               s.confidence, s.label).where(where).order_by(desc(s.received))
                        .limit(limit).offset(offset)).all()
    return int(total), [dict(r._mapping) for r in rows]


def sample(conn: Connection, device: str, sample_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(t.samples).where(t.samples.c.device == device,
                                               t.samples.c.sample_id == sample_id)).first()
    return None if row is None else dict(row._mapping)


def update_history(conn: Connection, device: str, limit: int = 50) -> list[dict[str, Any]]:
    u = t.update_history.c
    rows = conn.execute(select(u.at, u.state, u.sequence, u.serving, u.target_version, u.reason, u.code)
                        .where(u.device == device).order_by(desc(u.at)).limit(limit)).all()
    return [dict(r._mapping) for r in rows]


def drift(conn: Connection, since: float, limit: int = 200) -> dict[str, Any]:
    """Drift across devices: those drifting now, and drift events since ``since`` per device and feature."""
    e = t.events.c
    drifting = conn.execute(select(t.devices.c.id, t.devices.c.version, t.devices.c.drift_at)
                            .where(t.devices.c.drifting.is_(True)).order_by(desc(t.devices.c.drift_at))).all()
    per = conn.execute(select(e.device, e.feature, e.version, func.count(), func.max(e.ts))
                       .where(e.type == "drift", e.ts >= since).group_by(e.device, e.feature, e.version)
                       .order_by(desc(func.count())).limit(limit)).all()
    return {"drifting": [dict(r._mapping) for r in drifting],
            "events": [{"device": d, "feature": f, "version": v, "count": int(n), "last": last}
                       for d, f, v, n, last in per]}


def audit_log(conn: Connection, limit: int = 100, offset: int = 0) -> list[dict[str, Any]]:
    a = t.audit.c
    rows = conn.execute(select(t.audit).order_by(desc(a.ts)).limit(limit).offset(offset)).all()
    return [dict(r._mapping) for r in rows]


def ingest_lag(conn: Connection) -> float | None:
    """Seconds between the newest stored metric's device time and its arrival."""
    row = conn.execute(select(t.metrics.c.received, t.metrics.c.ts).order_by(desc(t.metrics.c.received))
                       .limit(1)).first()
    return None if row is None else max(0.0, row.received - row.ts)
