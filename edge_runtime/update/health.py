"""The health window after a swap: watch errors and latency of the new model; decide commit or switch back."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: float = Field(default=10.0, ge=0, description="How long the new model is watched after the swap.")
    min_inferences: int = Field(default=10, ge=0, description="Inferences needed before a verdict of healthy.")
    max_error_rate: float = Field(default=0.05, ge=0, le=1, description="Failed or non-finite results allowed.")
    latency_p95_ms: float | None = Field(
        default=None, gt=0, description="p95 latency limit (default: the profile's budget)."
    )
    max_window_s: float = Field(default=120.0, gt=0, description="Fail if min_inferences never arrive in this time.")


@dataclass
class Verdict:
    done: bool
    healthy: bool
    reason: str
    stats: dict[str, float] = field(default_factory=dict)


class HealthWindow:
    """Fed by the inference loop (``record``); asked by the update agent (``verdict``). Thread-safe."""

    def __init__(self, settings: HealthSettings, latency_budget_ms: float) -> None:
        self.s = settings
        self.limit_ms = settings.latency_p95_ms or latency_budget_ms
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._lat: list[float] = []
        self.errors = 0
        self.total = 0

    def record(self, ok: bool, latency_ms: float) -> None:
        with self._lock:
            self.total += 1
            if not ok or not math.isfinite(latency_ms):
                self.errors += 1
            else:
                self._lat.append(latency_ms)
                if len(self._lat) > 4096:
                    del self._lat[:2048]

    def add_failures(self, n: int) -> None:
        """Count ``n`` inferences that failed outright (the pipeline's error counter, not seen by ``record``)."""
        if n > 0:
            with self._lock:
                self.total += n
                self.errors += n

    def stats(self) -> dict[str, float]:
        with self._lock:
            lat = sorted(self._lat)
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
            rate = self.errors / self.total if self.total else 0.0
            return {"inferences": self.total, "errors": self.errors, "error_rate": rate, "latency_p95_ms": p95}

    def verdict(self) -> Verdict:
        st = self.stats()
        elapsed = time.monotonic() - self.started
        enough = st["inferences"] >= self.s.min_inferences
        if enough and st["error_rate"] > self.s.max_error_rate:
            return Verdict(True, False, f"error rate {st['error_rate']:.1%} > {self.s.max_error_rate:.1%}", st)
        if enough and st["latency_p95_ms"] > self.limit_ms:
            return Verdict(True, False, f"latency p95 {st['latency_p95_ms']:.1f} ms > {self.limit_ms:.1f} ms", st)
        if elapsed >= self.s.window_s and enough:
            return Verdict(True, True, f"healthy over {st['inferences']:.0f} inferences", st)
        if elapsed >= self.s.max_window_s:
            return Verdict(True, False, f"only {st['inferences']:.0f} inferences in {elapsed:.0f} s", st)
        return Verdict(False, False, "watching", st)


class LiveReport:
    """Rolling error/latency statistics of whatever model serves, reported (and reset) once per period.

    The fleet's canary rollout reads these from the retained update status while it watches the canaries.
    """

    def __init__(self, latency_budget_ms: float) -> None:
        self.budget_ms = latency_budget_ms
        self._window = HealthWindow(HealthSettings(), latency_budget_ms)
        self._base_errors: int | None = None

    def record(self, ok: bool, latency_ms: float) -> None:
        self._window.record(ok, latency_ms)

    def take(self, pipeline_errors: int) -> dict[str, float]:
        """Statistics since the last call, counting pipeline errors that happened meanwhile; then start over."""
        window, self._window = self._window, HealthWindow(HealthSettings(), self.budget_ms)
        if self._base_errors is not None:
            window.add_failures(pipeline_errors - self._base_errors)
        self._base_errors = pipeline_errors
        st = window.stats()
        st["period_s"] = round(time.monotonic() - window.started, 3)
        return st
