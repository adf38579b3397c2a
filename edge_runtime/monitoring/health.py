"""Honest /health: each condition an operator should act on becomes a reason with its measured figure and limit.

:class:`HealthWatch` keeps the little state the checks need (when the source last delivered a sample, how long
the MQTT link has been down, the inference error counters over a recent window). It is fed by every /health
call and by every metric period, so figures stay current whether or not anyone scrapes. The status is the worst
severity among the reasons: ``ok``, ``degraded`` or ``unhealthy`` (HTTP 503).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edge_runtime.monitoring.config import HealthConfig

SEVERITY = {"ok": 0, "degraded": 1, "unhealthy": 2}


@dataclass(frozen=True)
class Reason:
    """One failed check: ``value`` is the measured figure, ``limit`` the one it passed (same unit)."""

    check: str
    severity: str  # "degraded" or "unhealthy"
    message: str
    value: float | None = None
    limit: float | None = None
    unit: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


HealthCheck = Callable[[], "list[Reason]"]


def _graded(check: str, value: float, degraded: float, unhealthy: float | None, unit: str,
            what: str) -> Reason | None:
    """A reason if ``value`` passed a limit: unhealthy if it passed that one, else degraded."""
    if unhealthy is not None and value >= unhealthy:
        return Reason(check, "unhealthy", f"{what}: {value:g} {unit} (limit {unhealthy:g})", round(value, 3),
                      unhealthy, unit)
    if value >= degraded:
        return Reason(check, "degraded", f"{what}: {value:g} {unit} (limit {degraded:g})", round(value, 3),
                      degraded, unit)
    return None


class HealthWatch:
    """Stateful checks over the health document built by the device services."""

    def __init__(self, config: HealthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock = config, clock
        start = clock()
        self._captured: int | None = None
        self._captured_at = start  # a source that never delivers is stalled from the start
        self._link_up = False
        self._link_since = start
        self._errors: deque[tuple[float, int, int]] = deque()
        self._reported: tuple[float, float, str | None] | None = None  # (stall s, when, fault) from the pipeline
        self.checks: list[HealthCheck] = []  # more checks (the update agent's state), added by their owners

    # ----------------------------------------------------------------- observations
    def observe(self, source: Mapping[str, Any] | None, link_connected: bool | None,
                last_frame_monotonic: float | None = None) -> None:
        """Note the current counters (call at every health request and metric period)."""
        now = self.clock()
        if source and source.get("source_stalled_s") is not None:  # the pipeline's own figure, when it has one
            self._reported = (float(source["source_stalled_s"]), now, source.get("source_fault"))
        if source and "captured" in source:
            captured = int(source.get("captured") or 0)
            if captured != self._captured:
                self._captured, self._captured_at = captured, now
            processed = int(source.get("processed") or 0)
            errors = int(source.get("inference_errors", source.get("errors")) or 0)
            self._errors.append((now, processed, errors))
            while len(self._errors) > 2 and self._errors[1][0] <= now - self.config.error_window_s:
                self._errors.popleft()
        if last_frame_monotonic is not None and last_frame_monotonic > self._captured_at:
            self._captured_at = last_frame_monotonic
        if link_connected is not None and link_connected != self._link_up:
            self._link_up, self._link_since = link_connected, now

    def source_stall_s(self) -> float:
        """Seconds since the source last delivered a sample (or since monitoring started, if it never did): the
        pipeline's figure when it reports one, else from the capture counter."""
        if self._reported is None:
            return max(0.0, self.clock() - self._captured_at)
        stalled, at, _ = self._reported
        return stalled + max(0.0, self.clock() - at)

    def error_rate(self) -> tuple[float, int]:
        """(share of samples rejected by the model, samples seen) over the recent window."""
        if len(self._errors) < 2:
            return 0.0, 0
        (_, p0, e0), (_, p1, e1) = self._errors[0], self._errors[-1]
        errors, total = e1 - e0, (p1 - p0) + (e1 - e0)
        return (errors / total if total > 0 else 0.0), total

    def link_down_s(self) -> float:
        return 0.0 if self._link_up else max(0.0, self.clock() - self._link_since)

    # ----------------------------------------------------------------- verdict
    def assess(self, h: Mapping[str, Any]) -> tuple[str, list[Reason]]:
        """(status, reasons) for a health document (see DeviceServices.health)."""
        c = self.config
        source = h.get("source") or {}
        broker = h.get("broker") or {}
        self.observe(source, broker.get("connected") if broker.get("configured") else None)
        reasons: list[Reason | None] = []
        if "captured" in source:
            fault = self._reported[2] if self._reported else None
            what = f"no sample from the source ({fault}) for" if fault else "no sample from the source for"
            reasons.append(_graded("source_stalled", round(self.source_stall_s(), 1), c.source_stall_degraded_s,
                                   c.source_stall_unhealthy_s, "s", what))
            rate, n = self.error_rate()
            if n:
                reasons.append(_graded("inference_error_rate", round(rate, 4), c.error_rate_degraded,
                                       c.error_rate_unhealthy, "ratio", f"model rejected samples (of {n})"))
        reasons.append(self._outbox(h.get("outbox") or {}))
        if broker.get("configured"):
            reasons.append(_graded("link_down", round(self.link_down_s(), 1), c.link_down_degraded_s,
                                   c.link_down_unhealthy_s, "s", "MQTT link down for"))
        reasons.extend(_static_problems(h))
        for check in self.checks:
            reasons.extend(check())
        found = [r for r in reasons if r is not None]
        status = max((r.severity for r in found), key=SEVERITY.__getitem__, default="ok")
        return status, found

    def _outbox(self, ob: Mapping[str, Any]) -> Reason | None:
        bound, used = ob.get("max_bytes"), ob.get("bytes")
        if not bound or used is None:
            return None
        c = self.config
        return _graded("outbox_fill", round(used / bound, 4), c.outbox_fill_degraded, c.outbox_fill_unhealthy,
                       "ratio", "outbox bytes of its bound (oldest records are dropped at 1)")


def _static_problems(h: Mapping[str, Any]) -> list[Reason]:
    """Conditions with no figure to grade. Being offline is not one of them; a refused login is."""
    out: list[Reason] = []
    broker = h.get("broker") or {}
    if broker.get("refused") or str(broker.get("last_error") or "").startswith("TLS"):
        out.append(Reason("broker_refused", "degraded", f"broker: {broker.get('last_error')}"))
    ob = h.get("outbox") or {}
    if ob.get("append_failures") or ob.get("set_aside"):
        out.append(Reason("outbox_write_failures", "degraded", f"outbox: {ob.get('last_error') or 'write failures'}",
                          float(ob.get("append_failures") or 0), 0.0, "records"))
    if h.get("emit_dropped"):
        out.append(Reason("monitor_records_dropped", "degraded",
                          f"monitor: {h['emit_dropped']} records dropped before the outbox (writer too slow)",
                          float(h["emit_dropped"]), 0.0, "records"))
    return out


def update_agent_check(state: Callable[[], tuple[str, str | None]]) -> HealthCheck:
    """A check for the update agent: ``state()`` gives (state name, reason); failed is degraded (the live model
    keeps serving, but the update the fleet asked for did not happen)."""

    def check() -> list[Reason]:
        name, reason = state()
        if name == "failed":
            return [Reason("update_failed", "degraded", f"update agent failed: {reason or 'no reason given'}")]
        return []

    return check
