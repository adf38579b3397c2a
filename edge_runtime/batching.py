"""Batching across sources: one backend call for the frames that are ready from different sources at once.

Only where the model file has a dynamic batch dimension (``Model.batchable``), and only where it pays: at the start
of a run with several sources the backend is timed on batch 1 and on batch N (N: the number of sources, at most
``MAX_BATCH``) with the model's own preprocessed zero input, and batches are used when a sample costs at most
``GAIN`` of its batch-1 time (many CPU kernels gain little from batching, small models and accelerators a lot).
A batch holds at most one frame per source and never waits for one: what is ready joins, so per-source order
and round-robin fairness are those of the scheduler, and no frame waits longer for a batch to fill.
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

log = logging.getLogger("edge_runtime.pipeline")

MAX_BATCH = 8
GAIN = 0.9  # batch when one sample in a batch costs at most this share of a batch-1 call
BatchMode = Literal["auto", "on", "off"]


@dataclass(frozen=True)
class BatchPlan:
    """How many frames one backend call takes in this run, and the measurement behind it."""

    size: int  # 1: no batching
    reason: str
    single_ms: float | None = None  # median batch-1 call
    per_sample_ms: float | None = None  # median batch-N call / N

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _zero_input(model: Any) -> Any:
    spec = model.input_spec
    if spec.kind == "image":
        h, w, _ = spec.height_width_channels
        return np.zeros((h, w, 3), np.uint8)
    return np.zeros(tuple(max(d, 1) for d in spec.shape[1:]), np.float32)


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def plan_batches(model: Any, sources: int, mode: BatchMode = "auto", repeats: int = 5) -> BatchPlan:
    """The batch size for ``sources`` sources on ``model``: measured (``auto``), as large as allowed (``on``: no
    measurement), or 1 (``off``)."""
    n = min(sources, MAX_BATCH)
    if mode == "off" or n < 2:
        return BatchPlan(1, "off" if mode == "off" else "one source")
    batchable = getattr(model, "batchable", None)
    if not callable(batchable) or not batchable():
        return BatchPlan(1, "the model has no dynamic batch dimension")
    if mode == "on":
        return BatchPlan(n, "on")
    one = model.prepare(_zero_input(model))
    many = [one] * n
    model.predict_batch([one])  # warm-up: first calls allocate
    model.predict_batch(many)
    single = _median_ms(lambda: model.predict_batch([one]), repeats)
    per = _median_ms(lambda: model.predict_batch(many), repeats) / n
    if per <= GAIN * single:
        plan = BatchPlan(n, f"batch {n} costs {per:.2f} ms a sample against {single:.2f} ms alone", single, per)
    else:
        plan = BatchPlan(1, f"batch {n} saves too little ({per:.2f} against {single:.2f} ms a sample)", single, per)
    log.info("batching across sources: %s", plan.reason)
    return plan
