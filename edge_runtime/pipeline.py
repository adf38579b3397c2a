"""The streaming pipeline: source -> (motion gate) -> Model.predict -> sinks, with counters and latency.

The source reads in its own thread and hands samples over through a bounded queue with a drop policy, so capture
(and decoding) overlap inference. Each sink runs in its own guard: a failing sink is counted and logged and never
stops the others or the pipeline. ``swap_model`` replaces the model between two frames (OTA updates use it).
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import cv2

from edge_runtime.batching import BatchPlan, plan_batches
from edge_runtime.errors import ConfigError, EdgeRuntimeError, InferenceError
from edge_runtime.latency import STAGES, LatencyRecorder  # noqa: F401 - STAGES re-exported: hooks get these keys
from edge_runtime.multisource import (
    LaneScheduler,
    SourceLane,
    Staged,
    check_lanes,
    default_source_name,
    lane_failure,
    stage_frame,
)
from edge_runtime.pipeline_types import (
    FrameResult,
    Guarded,
    PipelineConfig,
    PipelineStats,
    Predictor,
    Sink,
    StageHook,
    compatible_inputs,
)
from edge_runtime.results import Prediction
from edge_runtime.sources.base import DropPolicy, Sample, ThreadedSource
from edge_runtime.sources.motion import MotionGate

__all__ = ["FrameResult", "Pipeline", "PipelineConfig", "PipelineStats", "Predictor", "Sink", "SourceLane",
           "StageHook", "stop_on_signals"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    """A sample of ``lane`` on its way to inference, preprocessed by ``model`` (None: not preprocessed)."""

    lane: SourceLane
    sample: Sample
    model: Predictor | None
    prepared: Any


class Pipeline:
    """Runs one model on one or several sources until they end, a bound is reached, or ``stop()`` is called.

    ``source`` is one source, or a list of :class:`~edge_runtime.multisource.SourceLane` (named sources, each with
    its own drop policy, frame-rate limit and motion gate) served round-robin by the one loaded model.
    """

    def __init__(
        self,
        model: Predictor,
        source: ThreadedSource | Sequence[SourceLane],
        sinks: Sequence[Sink] = (),
        config: PipelineConfig | None = None,
        motion_gate: MotionGate | None = None,
    ) -> None:
        if isinstance(source, ThreadedSource):
            lanes = [SourceLane(default_source_name(source.name), source, motion_gate)]
        else:
            if motion_gate is not None:
                raise ConfigError("give each source lane its own motion gate")
            lanes = list(source)
        check_lanes(lanes)
        want = "window" if model.input_spec.kind == "tensor" else "frame"
        for lane in lanes:
            if lane.source.kind != want:
                raise ConfigError(
                    f"model input {model.input_spec.name!r} is a {model.input_spec.kind} input but source "
                    f"{lane.source.name!r} gives {lane.source.kind}s"
                )
        self.lanes = lanes
        self.config = config or PipelineConfig()
        self.latency = LatencyRecorder(self.config.latency_window)
        self._model = model
        self._model_lock = threading.Lock()
        self._sinks = Guarded("sink")
        self._hooks = Guarded("stage hook")
        self._error_hooks = Guarded("error hook")
        for sink in sinks:
            self._sinks.items.append(sink)
        self._stop = threading.Event()
        self._scheduler = LaneScheduler(lanes, self._stop)
        self._processed = self._errors = self._consecutive_errors = self._inference_errors = 0
        self._opened = False
        self._started: float | None = None
        self._ended: float | None = None
        self._running = False
        self._last_error: str | None = None
        self.batch_plan = BatchPlan(1, "not started")
        self._batches = 0  # backend calls that took several frames

    # ------------------------------------------------------------------ wiring

    @property
    def model(self) -> Predictor:
        return self._model

    @property
    def source(self) -> ThreadedSource:
        """The first (with one source: the) source."""
        return self.lanes[0].source

    @property
    def motion_gate(self) -> MotionGate | None:
        return self.lanes[0].motion_gate

    def add_sink(self, sink: Sink) -> None:
        self._sinks.items.append(sink)

    def add_stage_hook(self, hook: StageHook) -> None:
        """``hook({stage: ms})`` after every processed sample (stages: see edge_runtime.latency.STAGES), guarded."""
        self._hooks.items.append(hook)

    def add_error_hook(self, hook: Callable[[EdgeRuntimeError], None]) -> None:
        """``hook(exc)`` for every sample the model rejected or failed on (InputError, InferenceError), guarded."""
        self._error_hooks.items.append(hook)

    def swap_model(self, new_model: Predictor) -> Predictor:
        """Replace the model between two frames, for every source at once; returns the old one (caller closes it)."""
        reason = compatible_inputs(self._model.input_spec, new_model.input_spec)
        if reason:
            raise ConfigError(f"cannot swap models: {reason}")
        with self._model_lock:  # waits for the frame in flight
            old, self._model = self._model, new_model
        log.info("model swapped: %s %s -> %s %s", old.manifest.name, old.manifest.version,
                 new_model.manifest.name, new_model.manifest.version)
        return old

    def stop(self) -> None:
        """Ask the run to end after the current sample (thread- and signal-safe)."""
        self._stop.set()
        self._scheduler.wake()

    def open(self) -> None:
        """Open every source now (SourceError if one cannot be), so a bad camera fails before anything else starts.

        ``run`` opens them when this was not called; once opened, ``run`` (or ``close_sources()``) must follow.
        """
        if not self._opened:
            self._scheduler.open_all(self._stage_in_reader)
            self._opened = True

    def close_sources(self) -> None:
        self._scheduler.close_all()

    # ------------------------------------------------------------------ state

    def source_fault(self) -> tuple[str | None, float]:
        """(why a source yields nothing, or None; the longest time since a source's last sample): for /health."""
        return self._scheduler.faults(self._running, self.config.stall_timeout_s, self._uptime())

    def _uptime(self) -> float:
        now = self._ended or time.monotonic()
        return now - self._started if self._started else 0.0

    def stats(self) -> PipelineStats:
        uptime = self._uptime()
        per = {lane.name: lane.counters(self._running, self.config.stall_timeout_s, uptime) for lane in self.lanes}

        def total(key: str) -> int:
            return sum(int(c[key]) for c in per.values())  # type: ignore[call-overload]

        fault, stalled = self.source_fault()
        m = self._model.manifest
        return PipelineStats(
            captured=total("captured"), processed=self._processed, dropped=total("dropped"),
            skipped_still=total("skipped_still"), bad_lines=total("bad_lines"),
            errors=self._errors, sink_errors=self._sinks.failures, reconnects=total("reconnects"),
            reconnect_attempts=total("reconnect_attempts"), uptime_s=uptime,
            fps=self._processed / uptime if uptime > 0 else 0.0, running=self._running,
            model=m.name, version=m.version, last_error=self._last_error, inference_errors=self._inference_errors,
            source_stalled_s=round(stalled, 3), source_fault=fault, sources=per,
            batch={**self.batch_plan.to_dict(), "batches": self._batches},
        )  # fmt: skip

    # ------------------------------------------------------------------ the loop

    def _time_left(self) -> float | None:
        """Seconds until the duration bound (None: no bound)."""
        assert self._started is not None
        limit = self.config.duration_s
        return None if limit is None else limit - (time.monotonic() - self._started)

    def run(self) -> PipelineStats:
        """Process samples until done; returns the final stats. A source that fails for good raises SourceError
        (with several sources: once the others have ended; until then it is reported in ``stats().sources``).

        A pipeline runs once. Threads besides the caller's: one reader per source. A reader of a source that drops
        nothing (files, stdin: drop policy ``block``) also gates and preprocesses each frame before queuing it, so
        that work overlaps inference with one hand-off per frame; a live source's reader queues raw frames (the
        ones its drop policy evicts are never preprocessed) and the caller's thread prepares the one it takes.
        """
        self._started = time.monotonic()
        self._running = True
        if self.config.opencv_threads is not None:
            cv2.setNumThreads(self.config.opencv_threads)
        try:
            self.open()
            self.batch_plan = plan_batches(self._model, len(self.lanes), self.config.batching)
            self._serve()
        finally:
            self.stop()
            self._running = False
            self._ended = time.monotonic()
            self.close_sources()
            for sink in self._sinks.items:
                close = getattr(sink, "close", None)
                if callable(close):
                    self._close_quietly(close)
        failure = lane_failure(self.lanes)
        if failure is not None:
            raise failure
        return self.stats()

    def _serve(self) -> None:
        """Take the next sample round-robin, infer, hand the result to the sinks; check stalls now and then."""
        sched = self._scheduler
        limit = self.config.stall_timeout_s
        check_every = min(1.0, limit / 4) if limit is not None else 3600.0
        next_check = time.monotonic() + check_every
        max_frames = self.config.max_frames
        while not self._stop.is_set() and sched.live():
            left = self._time_left()
            if left is not None and left <= 0:
                break
            wait = max(0.0, next_check - time.monotonic())
            got = sched.take(timeout=wait if left is None else min(wait, left))
            if time.monotonic() >= next_check:
                if limit is not None and self.config.fail_on_stall:
                    sched.end_stalled(limit)
                next_check = time.monotonic() + check_every
            if got is None:
                continue
            batch = [got, *sched.take_ready(self.batch_plan.size - 1)] if self.batch_plan.size > 1 else [got]
            jobs = []
            for lane, sample in batch:
                lane.taken += 1
                if max_frames is not None and lane.taken >= max_frames:
                    sched.end_lane(lane)
                job = self._job(lane, sample)
                if job is not None:
                    jobs.append(job)
            if jobs:
                self._process(jobs)

    @staticmethod
    def _close_quietly(close: Callable[[], None]) -> None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing a broken sink must not hide the run's result
            log.exception("closing a sink failed")

    # ------------------------------------------------------------------ gating and preprocessing

    def _stage_in_reader(self, lane: SourceLane) -> None:
        """A source that drops nothing gates and preprocesses in its reader thread (no work lost to drops)."""
        if lane.source.queue.policy is DropPolicy.BLOCK and hasattr(self._model, "prepare"):
            lane.source.stage = functools.partial(stage_frame, lane, lambda: self._model, self.config.frame_order)
            lane.source.keep_data = self.config.keep_frames

    def _job(self, lane: SourceLane, sample: Sample) -> _Job | None:
        """The sample as staged by its reader, else gated and preprocessed here; None when skipped or refused."""
        staged = sample.staged
        if isinstance(staged, Staged):
            if staged.error is not None:
                self._reject(lane, sample, staged.error)
                return None
            if staged.model is not self._model and sample.data is None:  # staged for a model swapped out since,
                lane.source.counters.dropped += 1  # and the frame was not kept (keep_frames=False): dropped
                return None
            return _Job(lane, sample, staged.model, staged.prepared)
        if lane.motion_gate is not None and not lane.motion_gate.should_infer(sample.data):
            return None
        model = self._model
        prepare = getattr(model, "prepare", None)
        if prepare is None:  # a plain predictor: everything happens in predict()
            return _Job(lane, sample, None, None)
        try:
            return _Job(lane, sample, model, prepare(sample.data, frame_order=self.config.frame_order))
        except EdgeRuntimeError as exc:
            self._reject(lane, sample, exc)
            return None

    def _reject(self, lane: SourceLane, sample: Sample, exc: EdgeRuntimeError) -> None:
        """Count a sample the model refused; too many in a row end the run with that error."""
        self._errors += 1
        lane.errors += 1
        self._inference_errors += isinstance(exc, InferenceError)
        self._consecutive_errors += 1
        in_a_row = self._consecutive_errors
        self._last_error = str(exc)
        if in_a_row <= 3 or in_a_row % 1000 == 0:
            log.warning("%s sample %d skipped (%d in a row): %s", lane.name, sample.index, in_a_row, exc)
        self._error_hooks(exc)
        limit = self.config.max_consecutive_errors
        if limit is not None and in_a_row >= limit:
            raise exc

    # ------------------------------------------------------------------ inference loop

    def _infer(self, job: _Job) -> Prediction | None:
        with self._model_lock:
            model = self._model
            try:
                if job.prepared is not None and job.model is model:
                    pred = model.predict_prepared(job.prepared)  # type: ignore[attr-defined]
                else:  # prepared by a model swapped out since, or a plain predictor
                    pred = model.predict(job.sample.data, frame_order=self.config.frame_order)
            except EdgeRuntimeError as exc:
                self._reject(job.lane, job.sample, exc)
                return None
        self._consecutive_errors = 0
        return pred

    def _infer_batch(self, jobs: list[_Job]) -> list[Prediction | None]:
        """One backend call for frames of different sources; one by one when a frame was prepared by a model
        swapped out since, or when the batch fails (so the frame at fault is the one counted)."""
        if len(jobs) > 1:
            with self._model_lock:
                model = self._model
                if all(j.prepared is not None and j.model is model for j in jobs):
                    try:
                        preds = model.predict_batch([j.prepared for j in jobs])  # type: ignore[attr-defined]
                    except EdgeRuntimeError:
                        preds = None
                    if preds is not None:
                        self._consecutive_errors = 0
                        self._batches += 1
                        return list(preds)
        return [self._infer(job) for job in jobs]

    def _process(self, jobs: list[_Job]) -> None:
        started = time.monotonic()
        preds = self._infer_batch(jobs)
        ready = time.monotonic()
        for job, pred in zip(jobs, preds, strict=True):
            if pred is not None:
                self._deliver(job, pred, started, ready)

    def _deliver(self, job: _Job, pred: Prediction, started: float, ready: float) -> None:
        """The result to the sinks; counters, latencies and stage hooks."""
        sample = job.sample
        t = pred.timings
        result = FrameResult(
            index=sample.index,
            timestamp=sample.timestamp,
            prediction=pred,
            frame=sample.data if self.config.keep_frames else None,
            capture_wait_ms=max(0.0, (started - sample.captured_at) * 1000.0 - t.preprocess_ms),
            end_to_end_ms=(ready - sample.captured_at) * 1000.0,
            source=job.lane.name,
        )
        self._processed += 1
        job.lane.processed += 1
        delivered = time.monotonic()
        self._sinks(result)
        stages = {
            "capture_wait": result.capture_wait_ms,
            "preprocess": t.preprocess_ms,
            "inference": t.inference_ms,
            "postprocess": t.postprocess_ms,
            "sinks": (time.monotonic() - delivered) * 1000.0,
            "end_to_end": result.end_to_end_ms,
        }
        self.latency.add(stages)
        if len(self.lanes) > 1:
            job.lane.latency.add({"end_to_end": result.end_to_end_ms})
        if self._hooks.items:
            self._hooks(stages)


@contextmanager
def stop_on_signals(pipeline: Pipeline) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM end the pipeline cleanly (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        pipeline.stop()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
