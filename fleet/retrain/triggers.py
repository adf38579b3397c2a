"""Which of a policy's triggers hold now, each with the figures it read (recorded as the run's reasons)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import desc, func, select

from fleet.retrain import labels as lab
from fleet.retrain import runs
from fleet.retrain.policy import RetrainPolicy
from fleet.server import registry as reg
from fleet.server.db import tables as t


def parent_version(conn: Any, model: str) -> str | None:
    """The production alias's version, else the newest registered one."""
    a = conn.execute(select(t.model_aliases.c.version).where(t.model_aliases.c.name == model,
                                                             t.model_aliases.c.alias == reg.PRODUCTION)).first()
    if a is not None:
        return str(a.version)
    v = conn.execute(select(t.model_versions.c.version).where(t.model_versions.c.name == model)
                     .order_by(desc(t.model_versions.c.registered)).limit(1)).first()
    return None if v is None else str(v.version)


def _members(conn: Any, group: str) -> list[str]:
    return [r.id for r in conn.execute(select(t.devices.c.id, t.devices.c.groups)) if group in (r.groups or [])]


def _field_accuracy(conn: Any, devices: list[str], since: float) -> float | None:
    vals = []
    for dev in devices:
        row = conn.execute(select(t.metrics.c.data).where(t.metrics.c.device == dev, t.metrics.c.ts >= since)
                           .order_by(desc(t.metrics.c.ts)).limit(1)).first()
        acc = (((row.data or {}).get("quality") or {}).get("field") or {}).get("accuracy") if row else None
        if isinstance(acc, int | float):
            vals.append(float(acc))
    return None if not vals else sum(vals) / len(vals)


def evaluate(conn: Any, policy: RetrainPolicy, now: float | None = None) -> tuple[list[dict[str, Any]], int]:
    """(reasons that hold, labels since the last run); empty reasons: no automatic run now."""
    now = time.time() if now is None else now
    tr = policy.triggers
    last = runs.last_run(conn, policy.model)
    since_run = 0.0 if last is None else float(last.created)
    new = lab.labelled_since(conn, since_run, policy.use_teacher_labels)
    if last is not None and now - since_run < tr.cooldown_s:
        return [], new
    reasons: list[dict[str, Any]] = []
    since = max(now - tr.window_s, since_run)
    members = _members(conn, policy.target.split(":", 1)[1])
    if tr.drift_devices is not None:
        n = int(conn.execute(select(func.count(func.distinct(t.events.c.device))).where(
            t.events.c.type == "drift", t.events.c.received >= since, t.events.c.device.in_(members))).scalar_one())
        if n >= tr.drift_devices:
            reasons.append({"trigger": "drift", "devices": n, "at_least": tr.drift_devices, "since": since})
    if tr.new_labels is not None and new >= tr.new_labels:
        reasons.append({"trigger": "new_labels", "labels": new, "at_least": tr.new_labels})
    if tr.field_accuracy_below is not None:
        acc = _field_accuracy(conn, members, now - tr.window_s)
        if acc is not None and acc < tr.field_accuracy_below:
            reasons.append({"trigger": "field_accuracy", "accuracy": round(acc, 4), "below": tr.field_accuracy_below})
    if tr.schedule_s is not None and now - since_run >= tr.schedule_s:
        reasons.append({"trigger": "schedule", "every_s": tr.schedule_s, "last_run": last and last.id})
    if new < tr.min_new_labels:
        return [], new
    return reasons, new
