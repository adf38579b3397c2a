"""The health window as a table: attempts that return and attempts that raise both count."""

from __future__ import annotations

import pytest

from edge_runtime.update.health import HealthSettings, HealthWindow

SETTINGS = HealthSettings(window_s=0, min_inferences=10, max_error_rate=0.1, latency_p95_ms=50)


@pytest.mark.parametrize(("raised", "nonfinite", "ok", "latency", "healthy", "reason"), [
    (10, 0, 0, 1.0, False, "inference errors 100% over 10 attempts"),  # a model that raises on every frame
    (0, 10, 0, 1.0, False, "non-finite results 100% over 10 attempts"),
    (1, 0, 9, 1.0, True, "healthy over 10 attempts"),
    (0, 0, 10, 80.0, False, "inference latency p95 80.0 ms > 50.0 ms"),
    (0, 0, 9, 1.0, None, "watching"),  # not enough attempts yet
])  # fmt: skip
def test_verdicts(raised: int, nonfinite: int, ok: int, latency: float, healthy: bool | None, reason: str) -> None:
    window = HealthWindow(SETTINGS, latency_budget_ms=1000)
    for _ in range(raised):
        window.record_error("InferenceError")
    for _ in range(nonfinite):
        window.record(False, latency)
    for _ in range(ok):
        window.record(True, latency)
    verdict = window.verdict()
    assert verdict.reason.startswith(reason), verdict
    assert verdict.done is (healthy is not None)
    if healthy is not None:
        assert verdict.healthy is healthy
    assert verdict.stats["attempts"] == raised + nonfinite + ok
    assert verdict.stats["raised"] == raised
