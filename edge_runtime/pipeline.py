"""The streaming pipeline: source -> (motion gate) -> Model.predict -> sinks, with counters and latency.

The source reads in its own thread and hands samples over through a bounded queue with a drop policy, so capture
(and decoding) overlap inference. Each sink runs in its own guard: a failing sink is counted and logged and never
stops the others or the pipeline. ``swap_model`` replaces the model between two frames (OTA updates use it).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge_runtime.errors import ConfigError, EdgeRuntimeError, InferenceError, SourceError
from edge_runtime.latency import STAGES, LatencyRecorder  # noqa: F401 - STAGES re-exported: hooks get these keys
from edge_runtime.package.manifest import InputSpec, Manifest
from edge_runtime.pipeline_types import FrameResult, Guarded, PipelineConfig, PipelineStats, Sink, StageHook
from edge_runtime.results import Prediction
from edge_runtime.sources.base import END, Sample, ThreadedSource
from edge_runtime.sources.motion import MotionGate

__all__ = ["FrameResult", "Pipeline", "PipelineConfig", "PipelineStats", "Predictor", "Sink", "StageHook",
           "stop_on_signals"]

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What the pipeline needs from a model (edge_runtime.api.Model provides it)."""

    manifest: Manifest

    @property
    def input_spec(self) -> InputSpec: ...

    def predict(self, x: np.ndarray, frame_order: str = "BGR") -> Prediction: ...

    # Optional: ``prepare(x, frame_order=...)`` and ``predict_prepared(prepared)`` let the pipeline preprocess the
    # next sample while the current one is inferred (edge_runtime.api.Model has both).


@dataclass(frozen=True)
class _Job:
    """A sample on its way to inference, preprocessed by ``model`` (None: not preprocessed)."""

    sample: Sample
    model: Predictor
    prepared: Any


def _compatible(old: InputSpec, new: InputSpec) -> str | None:
    if old.kind != new.kind:
        return f"the new model takes {new.kind} input, the running one {old.kind}"
    if old.kind == "tensor" and tuple(old.shape) != tuple(new.shape):
        return f"the new model's input shape {list(new.shape)} differs from {list(old.shape)}"
    return None


class Pipeline:
    """Runs a model on a source until the source ends, a bound is reached, or ``stop()`` is called."""

    def __init__(
        self,
        model: Predictor,
        source: ThreadedSource,
        sinks: Sequence[Sink] = (),
        config: PipelineConfig | None = None,
        motion_gate: MotionGate | None = None,
    ) -> None:
        want = "window" if model.input_spec.kind == "tensor" else "frame"
        if source.kind != want:
            raise ConfigError(
                f"model input {model.input_spec.name!r} is a {model.input_spec.kind} input but source "
                f"{source.name!r} gives {source.kind}s"
            )
        if motion_gate is not None and source.kind != "frame":
            raise ConfigError("the motion gate works on camera/video frames, not sensor windows")
        self.source = source
        self.config = config or PipelineConfig()
        self.motion_gate = motion_gate
        self.latency = LatencyRecorder(self.config.latency_window)
        self._model = model
        self._model_lock = threading.Lock()
        self._sinks = Guarded("sink")
        self._hooks = Guarded("stage hook")
        self._error_hooks = Guarded("error hook")
        for sink in sinks:
            self._sinks.items.append(sink)
        self._stop = threading.Event()
        self._handoff: queue.Queue[object] = queue.Queue(maxsize=1)
        self._taken = self._processed = self._errors = self._consecutive_errors = self._inference_errors = 0
        self._count_lock = threading.Lock()  # both the preparer and the inference loop count rejected samples
        self._opened = False
        self._started: float | None = None
        self._ended: float | None = None
        self._running = False
        self._last_error: str | None = None

    # ------------------------------------------------------------------ wiring

    @property
    def model(self) -> Predictor:
        return self._model

    def add_sink(self, sink: Sink) -> None:
        self._sinks.items.append(sink)

    def add_stage_hook(self, hook: StageHook) -> None:
        """``hook({stage: ms})`` after every processed sample (stages: see edge_runtime.latency.STAGES), guarded."""
        self._hooks.items.append(hook)

    def add_error_hook(self, hook: Callable[[EdgeRuntimeError], None]) -> None:
        """``hook(exc)`` for every sample the model rejected or failed on (InputError, InferenceError), guarded."""
        self._error_hooks.items.append(hook)

    def swap_model(self, new_model: Predictor) -> Predictor:
        """Replace the model between two frames; returns the old one (the caller closes it)."""
        reason = _compatible(self._model.input_spec, new_model.input_spec)
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

    def open(self) -> None:
        """Open the source now (SourceError if it cannot be), so a bad camera fails before anything else starts.

        ``run`` opens it when this was not called; once opened, ``run`` (or ``source.close()``) must follow.
        """
        if not self._opened:
            self.source.start()
            self._opened = True

    # ------------------------------------------------------------------ state

    def source_fault(self) -> tuple[str | None, float]:
        """(why the source yields nothing, or None; seconds since its last sample): for /health and status."""
        c = self.source.counters
        stalled = c.stalled_s() if self._running else 0.0
        limit = self.config.stall_timeout_s
        if c.fault is None and limit is not None and stalled >= limit:
            return f"{self.source.name} yielded no sample for {stalled:.0f} s", stalled
        return c.fault, stalled

    def stats(self) -> PipelineStats:
        c = self.source.counters
        now = self._ended or time.monotonic()
        fault, stalled = self.source_fault()
        uptime = now - self._started if self._started else 0.0
        m = self._model.manifest
        return PipelineStats(
            captured=c.captured, processed=self._processed, dropped=c.dropped,
            skipped_still=self.motion_gate.skipped if self.motion_gate else 0, bad_lines=c.bad_lines,
            errors=self._errors, sink_errors=self._sinks.failures, reconnects=c.reconnects,
            reconnect_attempts=c.reconnect_attempts, uptime_s=uptime,
            fps=self._processed / uptime if uptime > 0 else 0.0, running=self._running,
            model=m.name, version=m.version, last_error=self._last_error, inference_errors=self._inference_errors,
            source_stalled_s=round(stalled, 3), source_fault=fault,
        )  # fmt: skip

    # ------------------------------------------------------------------ the loop

    def _taking_more(self) -> bool:
        cfg = self.config
        return not self._stop.is_set() and (cfg.max_frames is None or self._taken < cfg.max_frames)

    def _time_left(self) -> bool:
        assert self._started is not None
        limit = self.config.duration_s
        return limit is None or time.monotonic() - self._started < limit

    def run(self) -> PipelineStats:
        """Process samples until done; returns the final stats. A source that fails for good raises SourceError.

        A pipeline runs once. Two threads besides the caller's: the source's reader, and a preparer that gates and
        preprocesses the next sample while the caller's thread runs inference on the current one.
        """
        self._started = time.monotonic()
        self._running = True
        preparer = threading.Thread(target=self._prepare_loop, name="pipeline-prepare", daemon=True)
        try:
            self.open()
            preparer.start()
            while not self._stop.is_set() and self._time_left():
                try:
                    item = self._handoff.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is END:
                    break
                if isinstance(item, BaseException):
                    raise item
                self._process(item)
        finally:
            self._stop.set()
            self._running = False
            self._ended = time.monotonic()
            self.source.close()
            if preparer.is_alive():
                preparer.join(timeout=2.0)
            for sink in self._sinks.items:
                close = getattr(sink, "close", None)
                if callable(close):
                    self._close_quietly(close)
        return self.stats()

    @staticmethod
    def _close_quietly(close: Callable[[], None]) -> None:
        try:
            close()
        except Exception:  # noqa: BLE001 - closing a broken sink must not hide the run's result
            log.exception("closing a sink failed")

    # ------------------------------------------------------------------ preparer thread

    def _hand_over(self, item: object) -> bool:
        """Put ``item`` in the one-slot hand-off (waits for the inference loop); False once stopped."""
        while not self._stop.is_set():
            try:
                self._handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _prepare_loop(self) -> None:
        try:
            while self._taking_more():
                item = self.source.get(timeout=0.1)
                if item is None:
                    self._check_stall()
                    continue
                if item is END:
                    break
                assert isinstance(item, Sample)
                self._taken += 1
                job = self._prepare(item)
                if job is not None and not self._hand_over(job):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._hand_over(exc)
            return
        self._hand_over(END)

    def _check_stall(self) -> None:
        limit = self.config.stall_timeout_s
        if limit is not None and self.config.fail_on_stall and self.source.counters.stalled_s() >= limit:
            fault = self.source.counters.fault
            raise SourceError(f"{self.source.name} yielded no sample for {limit:g} s" + (f" ({fault})" if fault
                                                                                          else ""))

    def _prepare(self, sample: Sample) -> _Job | None:
        if self.motion_gate is not None and not self.motion_gate.should_infer(sample.data):
            return None
        model = self._model
        prepare = getattr(model, "prepare", None)
        if prepare is None:  # a plain predictor: everything happens in predict()
            return _Job(sample, model, None)
        try:
            return _Job(sample, model, prepare(sample.data, frame_order=self.config.frame_order))
        except EdgeRuntimeError as exc:
            self._reject(sample, exc)
            return None

    def _reject(self, sample: Sample, exc: EdgeRuntimeError) -> None:
        """Count a sample the model refused; too many in a row end the run with that error."""
        with self._count_lock:
            self._errors += 1
            self._inference_errors += isinstance(exc, InferenceError)
            self._consecutive_errors += 1
            in_a_row = self._consecutive_errors
            self._last_error = str(exc)
        if in_a_row <= 3 or in_a_row % 1000 == 0:
            log.warning("sample %d skipped (%d in a row): %s", sample.index, in_a_row, exc)
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
                self._reject(job.sample, exc)
                return None
        with self._count_lock:
            self._consecutive_errors = 0
        return pred

    def _process(self, job: _Job) -> None:
        started = time.monotonic()
        pred = self._infer(job)
        if pred is None:
            return
        ready = time.monotonic()
        sample = job.sample
        t = pred.timings
        result = FrameResult(
            index=sample.index,
            timestamp=sample.timestamp,
            prediction=pred,
            frame=sample.data if self.config.keep_frames else None,
            capture_wait_ms=max(0.0, (started - sample.captured_at) * 1000.0 - t.preprocess_ms),
            end_to_end_ms=(ready - sample.captured_at) * 1000.0,
        )
        self._processed += 1
        self._sinks(result)
        stages = {
            "capture_wait": result.capture_wait_ms,
            "preprocess": t.preprocess_ms,
            "inference": t.inference_ms,
            "postprocess": t.postprocess_ms,
            "sinks": (time.monotonic() - ready) * 1000.0,
            "end_to_end": result.end_to_end_ms,
        }
        self.latency.add(stages)
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
