"""/health's checks as a table: each condition graded ok, degraded or unhealthy against its limits, with its figure
(a settable clock stands in for waiting)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edge_runtime.monitoring.config import HealthConfig
from edge_runtime.monitoring.health import HealthWatch, update_agent_check


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _doc(captured: int = 0, processed: int = 0, errors: int = 0, connected: bool | None = None,
         used: int | None = None) -> dict:
    h: dict = {"source": {"captured": captured, "processed": processed, "errors": errors}}
    if connected is not None:
        h["broker"] = {"configured": True, "connected": connected}
    if used is not None:
        h["outbox"] = {"bytes": used, "max_bytes": 1000}
    return h


def _checks(watch: HealthWatch, doc: dict) -> tuple[str, dict]:
    status, reasons = watch.assess(doc)
    return status, {r.check: (r.severity, r.value, r.limit) for r in reasons}


@pytest.mark.parametrize(("silent_s", "expected"), [(1.0, "ok"), (6.0, "degraded"), (16.0, "unhealthy")])
def test_a_source_that_stops_delivering_is_degraded_then_unhealthy(silent_s, expected):
    clock = Clock()
    w = HealthWatch(HealthConfig(), clock)
    assert _checks(w, _doc(captured=10, processed=10))[0] == "ok"
    clock.t += silent_s
    status, checks = _checks(w, _doc(captured=10, processed=10))
    assert status == expected
    if expected != "ok":
        assert checks["source_stalled"] == (expected, silent_s, 5.0 if expected == "degraded" else 15.0)


def test_error_rate_is_measured_over_the_recent_window_only():
    clock = Clock()
    w = HealthWatch(HealthConfig(error_window_s=60), clock)
    w.assess(_doc(captured=100, processed=100, errors=0))
    clock.t += 10
    status, checks = _checks(w, _doc(captured=200, processed=110, errors=90))  # 90 of 100 new samples rejected
    assert status == "unhealthy" and checks["inference_error_rate"] == ("unhealthy", 0.9, 0.5)
    for _ in range(8):  # then two minutes without errors: the bad stretch leaves the window
        clock.t += 15
        status, checks = _checks(w, _doc(captured=300 + int(clock.t), processed=110 + int(clock.t), errors=90))
    assert status == "ok" and "inference_error_rate" not in checks


def test_outbox_fill_link_down_and_a_failed_update_are_reasons_with_figures():
    clock = Clock()
    w = HealthWatch(HealthConfig(link_down_degraded_s=60, link_down_unhealthy_s=600), clock)
    w.checks.append(update_agent_check(lambda: ("failed", "signature_invalid")))
    w.assess(_doc(captured=1, connected=False, used=100))
    clock.t += 120
    status, checks = _checks(w, _doc(captured=2, connected=False, used=850))
    assert status == "degraded"
    assert checks == {"link_down": ("degraded", 120.0, 60.0), "outbox_fill": ("degraded", 0.85, 0.8),
                      "update_failed": ("degraded", None, None)}
    clock.t += 600
    status, checks = _checks(w, _doc(captured=3, connected=False, used=990))
    assert status == "unhealthy" and checks["outbox_fill"][0] == checks["link_down"][0] == "unhealthy"
    status, checks = _checks(w, _doc(captured=4, connected=True, used=10))
    assert "link_down" not in checks and "outbox_fill" not in checks


def test_limits_must_be_ordered():
    with pytest.raises(ValidationError, match="source_stall"):
        HealthConfig(source_stall_degraded_s=20, source_stall_unhealthy_s=10)
