"""The health window after a swap: watch the new model's attempts, errors and inference latency; decide commit
or switch back.

Every inference attempt counts: one that returns a prediction (``record``, with its inference-only latency and
whether its outputs are finite) and one that raises (``record_error``: the backend's typed error, counted by its
class). A model that fails every frame reaches ``min_inferences`` attempts as fast as a healthy one and fails on
its error rate ("inference errors 100% over N attempts"), inside its window.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field


class HealthSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window_s: float = Field(default=10.0, ge=0, description="How long the new model is watched after the swap.")
    min_inferences: int = Field(
        default=10, ge=0, description="Inference attempts (successful or not) needed before any verdict."
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Share of attempts allowed to raise or give non-finite results."
    )
    latency_p95_ms: float | None = Field(
        default=None, gt=0, description="p95 inference latency limit (default: the profile's inference budget)."
    )
    max_window_s: float = Field(default=120.0, gt=0, description="Fail if min_inferences never arrive in this time.")


@dataclass
class Verdict:
    done: bool
    healthy: bool
    reason: str
    stats: dict[str, float] = field(default_factory=dict)


class HealthWindow:
    """Fed by the inference loop (``record``, ``record_error``); asked by the update agent (``verdict``).

    Thread-safe. Latency is the inference time alone (the backend call), compared with an inference budget; the
    time a frame waited in the queue or spent in sinks says nothing about the model.
    """

    def __init__(self, settings: HealthSettings, latency_budget_ms: float, version: str | None = None) -> None:
        self.s = settings
        self.limit_ms = settings.latency_p95_ms or latency_budget_ms
        self.version = version  # the watched model's version: results of the one before (in flight) do not count
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._lat: list[float] = []
        self.attempts = 0
        self.errors = 0  # raised plus non-finite
        self.raised: Counter[str] = Counter()  # error class name -> count

    def record(self, ok: bool, inference_ms: float) -> None:
        """An attempt that returned a prediction (``ok``: its outputs are finite)."""
        with self._lock:
            self.attempts += 1
            if not ok or not math.isfinite(inference_ms):
                self.errors += 1
            else:
                self._lat.append(inference_ms)
                if len(self._lat) > 4096:
                    del self._lat[:2048]

    def record_error(self, kind: str) -> None:
        """An attempt that raised (``kind``: the error's class name, e.g. InferenceError)."""
        with self._lock:
            self.attempts += 1
            self.errors += 1
            self.raised[kind] += 1

    def stats(self) -> dict[str, float]:
        with self._lock:
            lat = sorted(self._lat)
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))] if lat else 0.0
            rate = self.errors / self.attempts if self.attempts else 0.0
            return {"attempts": self.attempts, "inferences": self.attempts - self.errors, "errors": self.errors,
                    "raised": sum(self.raised.values()), "error_rate": rate, "latency_p95_ms": p95}  # fmt: skip

    def verdict(self) -> Verdict:
        st = self.stats()
        elapsed = time.monotonic() - self.started
        attempts = int(st["attempts"])
        enough = attempts >= self.s.min_inferences
        if enough and st["error_rate"] > self.s.max_error_rate:
            what = "inference errors" if st["raised"] else "non-finite results"
            return Verdict(True, False, f"{what} {st['error_rate']:.0%} over {attempts} attempts "
                           f"(limit {self.s.max_error_rate:.0%})", st)
        if enough and st["latency_p95_ms"] > self.limit_ms:
            return Verdict(True, False, f"inference latency p95 {st['latency_p95_ms']:.1f} ms > "
                           f"{self.limit_ms:.1f} ms", st)
        if elapsed >= self.s.window_s and enough:
            return Verdict(True, True, f"healthy over {attempts} attempts", st)
        if elapsed >= self.s.max_window_s:
            return Verdict(True, False, f"only {attempts} inference attempts in {elapsed:.0f} s", st)
        return Verdict(False, False, "watching", st)


class LiveReport:
    """Rolling error/latency statistics of whatever model serves, reported (and reset) once per period.

    The fleet's canary rollout reads these from the retained update status while it watches the canaries.
    """

    def __init__(self, latency_budget_ms: float) -> None:
        self.budget_ms = latency_budget_ms
        self._window = HealthWindow(HealthSettings(), latency_budget_ms)

    def record(self, ok: bool, inference_ms: float) -> None:
        self._window.record(ok, inference_ms)

    def record_error(self, kind: str) -> None:
        self._window.record_error(kind)

    def take(self) -> dict[str, float]:
        """Statistics since the last call; then start over."""
        window, self._window = self._window, HealthWindow(HealthSettings(), self.budget_ms)
        st = window.stats()
        st["period_s"] = round(time.monotonic() - window.started, 3)
        return st
