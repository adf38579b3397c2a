"""The monitor's per-source shares, when one pipeline serves several sources with one model.

Each named source keeps its own drift windows (and device baseline), prediction quality and stage latencies, and
gets its own metric record per period, labelled ``source``: one camera turned to a wall cannot hide in the frames
of three others, and the records of one period partition its frames (the fleet's sums stay right). Drift events
name their source too. With one source none of this exists and the records look as they always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.monitoring.drift import DriftDetector
from edge_runtime.monitoring.metrics import StageLatencies
from edge_runtime.monitoring.quality import QualityStats

# the result's stages each share keeps (time in the sinks is the device's: one sink call serves every source)
SHARE_STAGES = ("capture_wait", "preprocess", "inference", "postprocess", "end_to_end")


@dataclass
class SourceShare:
    """What the monitor keeps for one named source."""

    name: str
    latency: StageLatencies
    quality: QualityStats
    drift: DriftDetector | None
    baseline_file: Path | None = None
    frames: int = 0
    period_frames: int = 0

    def add_latency(self, stages: dict[str, float]) -> None:
        for stage in SHARE_STAGES:
            self.latency.add(stage, stages[stage])

    def record_part(self, lane_counters: dict[str, Any] | None) -> dict[str, Any]:
        """This source's part of a metric record (the caller adds the device-wide parts), starting a new period."""
        doc: dict[str, Any] = {"source": self.name, "frames": self.period_frames, "frames_total": self.frames,
                               "latency_ms": self.latency.period_summary(),
                               "quality": self.quality.snapshot(reset=True)}
        if lane_counters is not None:
            doc["pipeline"] = dict(lane_counters)
        if self.drift is not None:
            doc["drift"] = self.drift.snapshot()
        self.period_frames = 0
        return doc


def share_baseline(device_file: Path | None, name: str) -> Path | None:
    """Where one source keeps its learned device baseline: beside the device's, named after the source."""
    if device_file is None:
        return None
    return device_file.with_name(f"{device_file.stem}.{name}{device_file.suffix}")
