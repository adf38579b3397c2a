"""Several sources feeding one pipeline (one loaded model): lanes and a fair scheduler.

Each source keeps its own reader thread, bounded queue and drop policy, frame-rate limit (``fps_limit``) and motion
gate; a :class:`SourceLane` names it. The :class:`LaneScheduler` takes the next sample round-robin over the lanes
that have one, so a fast source (a file read as fast as it decodes) cannot starve a slow one (a 5 fps camera), and
waits on one condition that every lane's queue signals -- no polling. A lane that fails for good (a camera past
its reconnect bound, a stall) is reported and closed while the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edge_runtime.errors import ConfigError, EdgeRuntimeError, SourceError
from edge_runtime.latency import LatencyRecorder
from edge_runtime.sources import SourceOptions
from edge_runtime.sources.base import END, Sample, ThreadedSource
from edge_runtime.sources.motion import MotionGate

log = logging.getLogger("edge_runtime.pipeline")

_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


def check_source_name(name: str) -> str:
    """A source name labels results, metrics and health: letters, digits, ``_ - .``, at most 64 characters."""
    if not name or len(name) > 64 or not set(name) <= _NAME_CHARS or not name[0].isalnum():
        raise ConfigError(f"source name {name!r}: use 1-64 letters, digits, '_', '-' or '.', starting with a letter "
                          "or digit")
    return name


def default_source_name(spec: str) -> str:
    """A name for a source given none: the last part of its path or URL (``clip.mp4``, ``0``), cleaned."""
    tail = spec.strip().rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or spec
    cleaned = "".join(ch if ch in _NAME_CHARS else "_" for ch in tail)[:64].lstrip("_-.")
    return cleaned or "source"


def split_named_source(text: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a plain SPEC gets its default name. ``=`` inside a URL or a serial spec's
    query (``serial:/dev/ttyUSB0?baud=115200``) is no name: a name has only letters, digits and ``_ - .``."""
    head, sep, rest = text.partition("=")
    if sep and head and set(head) <= _NAME_CHARS and rest.strip():
        return check_source_name(head), rest.strip()
    return default_source_name(text), text.strip()


class NamedSource(BaseModel):
    """One named input of a device config's or agent config's ``sources:`` (several served by one model)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Labels this source's results, metrics and health (letters, digits, _ - .).")
    source: str = Field(description="An open_source spec (camera, stream URL, file, sensor); the agent also takes "
                        "'synthetic'.")
    options: SourceOptions = Field(default_factory=SourceOptions, description="Drop policy, queue, reconnect, "
                                   "fps_limit, loop, for this source alone.")
    motion_gate: float | None = Field(default=None, gt=0, lt=1, description="Skip still frames of this source: "
                                      "share of changed pixels, e.g. 0.01 (None: infer every frame).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return check_source_name(v)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None


def check_unique(entries: Sequence[NamedSource]) -> None:
    """ValueError (inside a config validator) when two sources share a name."""
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"the names of sources must differ: {', '.join(twice)} given twice")


@dataclass
class SourceLane:
    """One named source of a pipeline with its own motion gate; the counters the pipeline keeps for it."""

    name: str
    source: ThreadedSource
    motion_gate: MotionGate | None = None
    taken: int = 0
    processed: int = 0
    errors: int = 0
    done: bool = False
    error: BaseException | None = None  # why the lane ended early (SourceError, a crashed reader)
    latency: LatencyRecorder = field(default_factory=lambda: LatencyRecorder(2000))

    def __post_init__(self) -> None:
        check_source_name(self.name)
        if self.motion_gate is not None and self.source.kind != "frame":
            raise ConfigError(f"source {self.name}: the motion gate works on camera/video frames, not sensor "
                              "windows")

    def counters(self, running: bool, stall_limit: float | None, uptime_s: float) -> dict[str, object]:
        """This lane's share of the pipeline's stats (PipelineStats.sources[name])."""
        c = self.source.counters
        stalled = c.stalled_s() if running and not self.done else 0.0
        fault = c.fault
        if self.error is not None:
            fault = str(self.error)
        elif fault is None and stall_limit is not None and stalled >= stall_limit and not self.done:
            fault = f"{self.name} yielded no sample for {stalled:.0f} s"
        e2e = self.latency.summary().get("end_to_end", {})
        return {
            "captured": c.captured, "processed": self.processed, "dropped": c.dropped,
            "skipped_still": self.motion_gate.skipped if self.motion_gate else 0, "bad_lines": c.bad_lines,
            "errors": self.errors, "reconnects": c.reconnects, "reconnect_attempts": c.reconnect_attempts,
            "fps": round(self.processed / uptime_s, 3) if uptime_s > 0 else 0.0, "fault": fault,
            "stalled_s": round(stalled, 3), "done": self.done, "end_to_end_p95_ms": round(e2e.get("p95", 0.0), 3),
        }  # fmt: skip


@dataclass(frozen=True)
class Staged:
    """What a reader thread made of a frame before queuing it: preprocessed by ``model``, or refused (``error``)."""

    model: Any
    prepared: Any
    error: EdgeRuntimeError | None = None


def stage_frame(lane: SourceLane, model: Callable[[], Any], frame_order: str, data: Any) -> Staged | None:
    """(reader thread) None: a still frame, skipped by the lane's motion gate; else the frame preprocessed by the
    current ``model()``, or why it refused the frame (counted by the pipeline when it takes the sample)."""
    if lane.motion_gate is not None and not lane.motion_gate.should_infer(data):
        return None
    current = model()
    try:
        return Staged(current, current.prepare(data, frame_order=frame_order))
    except EdgeRuntimeError as exc:
        return Staged(current, None, exc)


def check_lanes(lanes: Sequence[SourceLane]) -> None:
    if not lanes:
        raise ConfigError("a pipeline needs at least one source")
    names = [lane.name for lane in lanes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"source names must differ: {', '.join(dupes)} given twice (name them: --source NAME=SPEC)")
    kinds = {lane.source.kind for lane in lanes}
    if len(kinds) > 1:
        raise ConfigError("all sources of one pipeline must give the same kind of sample (frames or windows)")


class LaneScheduler:
    """Round-robin over the lanes' queues, waiting on one shared condition that every queue's put signals."""

    def __init__(self, lanes: Sequence[SourceLane], stop: threading.Event) -> None:
        self.lanes = list(lanes)
        self._stop = stop
        self._cond = threading.Condition()
        self._signals = 0
        self._next = 0
        for lane in self.lanes:
            lane.source.queue.listener = self.wake

    def wake(self) -> None:
        """A queue got a sample or finished (reader threads), or the run stops: re-check the lanes."""
        with self._cond:
            self._signals += 1
            self._cond.notify()

    def open_all(self, before_start: Callable[[SourceLane], None]) -> None:
        """Start every lane's source (``before_start(lane)`` first); SourceError if one cannot be opened, after
        closing those already started."""
        opened: list[ThreadedSource] = []
        try:
            for lane in self.lanes:
                before_start(lane)
                lane.source.start()
                opened.append(lane.source)
        except BaseException:
            for src in opened:
                src.close()
            raise

    def close_all(self) -> None:
        for lane in self.lanes:
            lane.source.close()

    def faults(self, running: bool, stall_limit: float | None, uptime: float) -> tuple[str | None, float]:
        """(why sources yield nothing, or None; the longest time since a source's last sample): for /health."""
        faults, stalled = [], 0.0
        for lane in self.lanes:
            c = lane.counters(running, stall_limit, uptime)
            stalled = max(stalled, float(c["stalled_s"]))  # type: ignore[arg-type]
            if c["fault"]:
                faults.append(str(c["fault"]) if len(self.lanes) == 1 else f"{lane.name}: {c['fault']}")
        return ("; ".join(faults) or None), stalled

    def end_stalled(self, limit: float) -> None:
        """End (with SourceError) every live lane whose source yielded nothing for ``limit`` seconds."""
        for lane in self.live():
            c = lane.source.counters
            if c.stalled_s() >= limit:
                why = f"{lane.source.name} yielded no sample for {limit:g} s" + (f" ({c.fault})" if c.fault else "")
                self.end_lane(lane, SourceError(why))

    def live(self) -> list[SourceLane]:
        return [lane for lane in self.lanes if not lane.done]

    def end_lane(self, lane: SourceLane, error: BaseException | None = None) -> None:
        """Stop taking from ``lane``; an ``error`` is reported (stats, log) and kept for the end of the run."""
        if lane.done:
            return
        lane.done = True
        if error is not None:
            lane.error = error
            if len(self.lanes) > 1:
                log.warning("source %s failed; the other sources go on: %s", lane.name, error)
        lane.source.close()

    def _try(self, lane: SourceLane) -> Sample | None:
        """The lane's next sample if one is there now (ending the lane when its queue finished or failed)."""
        try:
            item = lane.source.get(0)
        except Exception as exc:  # noqa: BLE001 - the reader failed: that lane ends, the others go on
            self.end_lane(lane, exc)
            return None
        if item is END:
            self.end_lane(lane)
            return None
        assert item is None or isinstance(item, Sample)
        return item

    def _poll(self) -> tuple[SourceLane, Sample] | None:
        """The next lane in turn that has a sample."""
        n = len(self.lanes)
        for step in range(n):
            i = (self._next + step) % n
            lane = self.lanes[i]
            if lane.done:
                continue
            item = self._try(lane)
            if item is not None:
                self._next = (i + 1) % n
                return lane, item
        return None

    def take_ready(self, limit: int) -> list[tuple[SourceLane, Sample]]:
        """Up to ``limit`` more samples that are ready now, at most one per lane, in turn, without waiting: the
        rest of a batch (the lane just taken is the one before ``_next``, so it comes last and is skipped)."""
        out: list[tuple[SourceLane, Sample]] = []
        n = len(self.lanes)
        start = self._next
        for step in range(n - 1):
            if len(out) >= limit:
                break
            i = (start + step) % n
            lane = self.lanes[i]
            if lane.done:
                continue
            item = self._try(lane)
            if item is not None:
                out.append((lane, item))
                self._next = (i + 1) % n
        return out

    def take(self, timeout: float) -> tuple[SourceLane, Sample] | None:
        """The next (lane, sample); None after ``timeout`` seconds without one, when stopped or every lane ended."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set() and self.live():
            with self._cond:
                seen = self._signals
            got = self._poll()
            if got is not None or not self.live():  # (the poll ends lanes whose queue finished)
                return got
            with self._cond:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self._signals == seen:  # nothing arrived since the poll: sleep until a queue signals
                    self._cond.wait(left)
        return None


def lane_failure(lanes: Sequence[SourceLane]) -> BaseException | None:
    """The error to end the run with, once every lane ended: the first lane's that failed (None: none did).

    A SourceError from one of several lanes is re-worded to name the source; a crash is re-raised as it is."""
    failed = [lane for lane in lanes if lane.error is not None]
    if not failed:
        return None
    first = failed[0].error
    assert first is not None
    if len(lanes) == 1 or not isinstance(first, SourceError):
        return first
    names = ", ".join(f"{lane.name} ({lane.error})" for lane in failed)
    return SourceError(f"{len(failed)} of {len(lanes)} sources failed: {names}")
