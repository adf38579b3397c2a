"""Canaries judged against a control group over the same window, from the metric records devices sent.

The control group is the target's devices still on the old version. Each figure is computed for both groups over
the same time window; the verdict fails only on what the canaries show beyond the control group, so a change in
the environment that both groups see (a darker scene, drift on every camera) does not stop a good rollout, while a
regression only the canaries show does. Without a control group the limits apply to the canaries alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from fleet.server.db import tables as t


class Thresholds(BaseModel):
    """How much worse than the control group the canaries may be."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate_delta: float = Field(default=0.02, ge=0, le=1, description="Errors per frame, canary - control.")
    max_latency_ratio: float = Field(default=1.5, gt=1, description="Canary latency p95 / control latency p95.")
    max_drift_delta: float = Field(default=1.0, ge=0, description="Mean of each record's largest drift score "
                                   "(sigmas from the reference, metrics/1 drift.features.*.d), canary - control.")
    max_confidence_drop: float = Field(default=0.1, ge=0, le=1, description="Mean confidence, control - canary.")
    min_records: int = Field(default=3, ge=1, description="Metric records each group needs in the window.")


def _p95(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(0.95 * (len(v) - 1))))]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def group_figures(conn: Any, devices: list[str], version: str, since: float, until: float) -> dict[str, Any]:
    """Error rate, latency p95 (of each record's p90), mean drift and confidence of ``devices`` on ``version``."""
    m = t.metrics
    rows = conn.execute(select(m.c.frames, m.c.errors, m.c.latency_p90, m.c.drift_max, m.c.confidence_mean)
                        .where(m.c.device.in_(devices), m.c.version == version, m.c.ts >= since, m.c.ts <= until)
                        ).all() if devices else []
    frames = sum(r.frames or 0 for r in rows)
    return {"devices": len(devices), "records": len(rows), "frames": frames,
            "error_rate": (sum(r.errors or 0 for r in rows) / frames) if frames else None,
            "latency_p95_ms": _p95([r.latency_p90 for r in rows if r.latency_p90 is not None]),
            "drift": _mean([r.drift_max for r in rows if r.drift_max is not None]),
            "confidence": _mean([r.confidence_mean for r in rows if r.confidence_mean is not None])}


def judge(canary: dict[str, Any], control: dict[str, Any] | None, th: Thresholds) -> tuple[bool, str]:
    """(passed, reason): the canaries against the control group (or, without one, against the limits alone)."""
    if canary["records"] < th.min_records:
        return False, f"canaries sent {canary['records']} metric records in the window (need {th.min_records})"
    ctl = control if control is not None and control["records"] >= th.min_records else None
    failures = []
    c_err, k_err = canary["error_rate"] or 0.0, (ctl["error_rate"] or 0.0) if ctl else 0.0
    if c_err - k_err > th.max_error_rate_delta:
        failures.append(f"error rate {c_err:.3f} vs control {k_err:.3f}")
    if ctl and canary["latency_p95_ms"] and ctl["latency_p95_ms"] \
            and canary["latency_p95_ms"] > th.max_latency_ratio * ctl["latency_p95_ms"]:
        failures.append(f"latency p95 {canary['latency_p95_ms']:.1f} ms vs control {ctl['latency_p95_ms']:.1f} ms")
    if ctl and canary["drift"] is not None and ctl["drift"] is not None \
            and canary["drift"] - ctl["drift"] > th.max_drift_delta:
        failures.append(f"drift {canary['drift']:.3f} vs control {ctl['drift']:.3f}")
    if ctl and canary["confidence"] is not None and ctl["confidence"] is not None \
            and ctl["confidence"] - canary["confidence"] > th.max_confidence_drop:
        failures.append(f"confidence {canary['confidence']:.3f} vs control {ctl['confidence']:.3f}")
    if failures:
        return False, "canaries worse than the control group: " + "; ".join(failures)
    basis = "the control group" if ctl else "the limits alone (no control group with enough records)"
    return True, f"canaries within the thresholds against {basis}"
