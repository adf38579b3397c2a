"""Per-stage latency of a pipeline run: the stage names and a bounded recorder of recent samples.

The pipeline records every processed sample here; ``edge-runtime run`` prints the table at the end and benchmarks
read the percentiles. (Monitoring keeps its own fixed-bucket histograms: see edge_runtime.monitoring.metrics.)
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

import numpy as np

STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "sinks", "end_to_end")


class LatencyRecorder:
    """Recent per-stage latencies (bounded) and their percentiles."""

    def __init__(self, window: int = 10000) -> None:
        self._samples: dict[str, deque[float]] = {stage: deque(maxlen=window) for stage in STAGES}
        self._lock = threading.Lock()

    def add(self, stages: Mapping[str, float]) -> None:
        with self._lock:
            for stage, ms in stages.items():
                if stage in self._samples:
                    self._samples[stage].append(ms)

    def summary(self) -> dict[str, dict[str, float]]:
        """stage -> {count, p50, p90, p95, p99, mean} in milliseconds (stages without samples are left out)."""
        with self._lock:
            data = {k: np.asarray(v, dtype=np.float64) for k, v in self._samples.items() if v}
        return {
            k: {
                "count": float(v.size),
                "p50": float(np.percentile(v, 50)),
                "p90": float(np.percentile(v, 90)),
                "p95": float(np.percentile(v, 95)),
                "p99": float(np.percentile(v, 99)),
                "mean": float(v.mean()),
            }
            for k, v in data.items()
        }

    def format(self) -> str:
        """A small table for humans (stderr at the end of a run)."""
        rows = [f"{'stage':<13}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'n':>8}"]
        for stage, s in self.summary().items():
            rows.append(f"{stage:<13}{s['p50']:>9.2f}{s['p90']:>9.2f}{s['p99']:>9.2f}{int(s['count']):>8}")
        return "\n".join(rows)
