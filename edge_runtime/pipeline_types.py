"""What a pipeline run hands out and takes in: its results, counters and bounds (plain data, no threads).

Kept apart from edge_runtime/pipeline.py, which re-exports every name here, so the loop reads on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.package.manifest import InputSpec, Manifest
from edge_runtime.results import Prediction

log = logging.getLogger("edge_runtime.pipeline")


@dataclass(frozen=True)
class FrameResult:
    """One processed sample: what sinks receive."""

    index: int  # the source's sample number (gaps are dropped or skipped samples)
    timestamp: float  # wall-clock capture time (seconds since the epoch)
    prediction: Prediction
    frame: np.ndarray | None  # the input frame (BGR) or sensor window
    capture_wait_ms: float  # capture -> start of processing (time spent queued)
    end_to_end_ms: float  # capture -> prediction ready
    source: str = ""  # the name of the source it came from (--source NAME=SPEC, the agent's sources:)


Sink = Callable[[FrameResult], None]
StageHook = Callable[[Mapping[str, float]], None]


@dataclass(frozen=True)
class PipelineStats:
    """A snapshot of the pipeline's counters, for logs, health endpoints and monitoring."""

    captured: int
    processed: int
    dropped: int
    skipped_still: int
    bad_lines: int
    errors: int
    sink_errors: int
    reconnects: int
    reconnect_attempts: int
    uptime_s: float
    fps: float
    running: bool
    model: str
    version: str
    last_error: str | None
    inference_errors: int = 0  # of ``errors``: the model raised while running (InferenceError), not a bad input
    source_stalled_s: float = 0.0  # seconds since the source last yielded a sample (or opened)
    source_fault: str | None = None  # why the source yields nothing now (reconnecting, stalled); None when fine
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # per source name: its counters and fault
    batch: dict[str, Any] = field(default_factory=dict)  # the batching plan (size, reason, timings) and batches run

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class PipelineConfig(BaseModel):
    """Bounds and behaviour of one pipeline run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_frames: int | None = Field(default=None, ge=1, description="Stop after this many samples from the source.")
    duration_s: float | None = Field(default=None, gt=0, description="Stop after this many seconds.")
    frame_order: Literal["BGR", "RGB", "GRAY"] = Field(
        default="BGR", description="Channel order of frames from the source (OpenCV: BGR)."
    )
    max_consecutive_errors: int | None = Field(
        default=25, ge=1, description="Give up after this many samples in a row the model rejects or fails on "
        "(None: never; every error is counted and passed to the error hooks, e.g. the update agent's health window).",
    )
    stall_timeout_s: float | None = Field(
        default=None, gt=0, description="A source that yields no sample this long is faulty (None: no bound).",
    )
    fail_on_stall: bool = Field(
        default=True, description="End the run with SourceError on a stall; False: report it in stats.source_fault.",
    )
    keep_frames: bool = Field(default=True, description="Pass the input frame or window to sinks.")
    latency_window: int = Field(default=10000, ge=10, description="Recent samples kept per stage for percentiles.")
    batching: Literal["auto", "on", "off"] = Field(
        default="auto", description="Several sources on a model with a dynamic batch dimension: one backend call "
        "for the frames ready from different sources, when timing batch 1 against batch N at the start shows it "
        "pays (auto), always (on), or never (off). See edge_runtime.batching.",
    )
    opencv_threads: int | None = Field(
        default=1, ge=0, description="cv2.setNumThreads for the run (None: leave OpenCV's default). OpenCV's pool "
        "spins in sched_yield between the small resizes of each frame while other threads decode and infer: about "
        "400 calls a frame and most of the run's system time here; 1 keeps each call on its caller's thread.",
    )


class Guarded:
    """Calls callables one by one, each in its own guard; failures are counted and logged (rate-limited)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[Callable[[Any], None]] = []
        self.failures = 0

    def __call__(self, value: Any) -> None:
        for fn in list(self.items):
            try:
                fn(value)
            except Exception:  # noqa: BLE001 - isolation is the point: one bad sink must not stop the rest
                self.failures += 1
                if self.failures <= 5 or self.failures % 1000 == 0:
                    log.exception("%s %r failed (%d failures so far)", self.what, fn, self.failures)


class Predictor(Protocol):
    """What the pipeline needs from a model (edge_runtime.api.Model provides it)."""

    manifest: Manifest

    @property
    def input_spec(self) -> InputSpec: ...

    def predict(self, x: np.ndarray, frame_order: str = "BGR") -> Prediction: ...

    # Optional: ``prepare(x, frame_order=...)`` and ``predict_prepared(prepared)`` let the pipeline preprocess the
    # next sample while the current one is inferred (edge_runtime.api.Model has both).


def compatible_inputs(old: InputSpec, new: InputSpec) -> str | None:
    """Why ``new`` cannot replace ``old`` between two frames (None: it can)."""
    if old.kind != new.kind:
        return f"the new model takes {new.kind} input, the running one {old.kind}"
    if old.kind == "tensor" and tuple(old.shape) != tuple(new.shape):
        return f"the new model's input shape {list(new.shape)} differs from {list(old.shape)}"
    return None
