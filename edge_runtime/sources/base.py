"""What every source shares: the Sample it yields, the bounded hand-off queue with a named drop policy, the
reconnect policy for live inputs, and counters.

A source runs a reader thread that puts samples into a :class:`SampleQueue`; the pipeline takes them out. The
queue is where capture and inference overlap, and where frames are dropped (and counted) when inference is slower.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

SampleKind = Literal["frame", "window"]


@dataclass(frozen=True)
class Sample:
    """One unit of input: a BGR uint8 frame or a sensor window [size, channels]."""

    index: int
    timestamp: float  # wall clock (time.time()) at capture, for results
    captured_at: float  # time.monotonic() at capture, for latency
    data: np.ndarray | None  # None only when a reader stage took what it needs and the frame is not kept
    staged: object = None  # what the source's ``stage`` made of the data in the reader thread (the pipeline's)


class DropPolicy(enum.StrEnum):
    """What happens when the source is faster than inference.

    - ``newest-only``: keep one sample, a new one replaces it (live cameras: always infer on the latest frame).
    - ``drop-oldest``: keep up to ``queue_size`` samples, a new one evicts the oldest.
    - ``block``: the reader waits for room, nothing is dropped (files: process every frame).
    """

    NEWEST_ONLY = "newest-only"
    DROP_OLDEST = "drop-oldest"
    BLOCK = "block"


class ReconnectPolicy(BaseModel):
    """Exponential backoff for live sources that drop (network cameras, unplugged USB/serial devices)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    initial_delay_s: float = Field(default=0.5, gt=0, description="Wait before the first reconnect attempt.")
    max_delay_s: float = Field(default=10.0, gt=0, description="Upper bound on the wait between attempts.")
    factor: float = Field(default=2.0, ge=1.0, description="Wait multiplier after each failed attempt.")
    max_attempts: int = Field(
        default=20, ge=0, description="Reconnect attempts without a sample in between before the source gives up "
        "(0: never retry). A reopen that yields no sample does not reset the count.",
    )
    give_up: bool = Field(
        default=True, description="Raise SourceError at the bound; False: keep retrying at max_delay_s and report "
        "the fault (the agent, which must keep serving updates and status).",
    )

    def delay(self, attempt: int) -> float:
        """The wait before attempt number ``attempt`` (0-based)."""
        return min(self.initial_delay_s * self.factor ** min(attempt, 64), self.max_delay_s)

    def delays(self) -> list[float]:
        """The waits before each attempt, bounded in number and size."""
        return [self.delay(i) for i in range(self.max_attempts)]


@dataclass
class SourceCounters:
    """Counters a source updates from its reader thread (ints: updates are atomic under the GIL)."""

    captured: int = 0
    dropped: int = 0
    reconnects: int = 0
    reconnect_attempts: int = 0
    bad_lines: int = 0
    extra: dict[str, int] = field(default_factory=dict)
    opened_at: float | None = None  # time.monotonic() when the source was opened
    last_sample_at: float | None = None  # time.monotonic() of the last sample yielded
    fault: str | None = None  # why the source yields nothing right now (reconnecting...); None once samples flow

    def stalled_s(self, now: float | None = None) -> float:
        """Seconds since the source last yielded a sample (or since it opened); 0 before it opened."""
        since = self.last_sample_at or self.opened_at
        return max(0.0, (now or time.monotonic()) - since) if since is not None else 0.0


_END = object()


class SampleQueue:
    """Bounded hand-off between a reader thread and the pipeline, applying a DropPolicy and counting drops."""

    def __init__(self, policy: DropPolicy, counters: SourceCounters, queue_size: int = 4) -> None:
        if queue_size < 1:
            raise ConfigError("queue size must be at least 1")
        self.policy = policy
        self.maxlen = 1 if policy is DropPolicy.NEWEST_ONLY else queue_size
        self._items: deque[Sample] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._error: Exception | None = None
        self._counters = counters
        # called (outside the lock) after every put and finish: a pipeline reading several queues waits on one
        # condition of its own instead of polling each queue (edge_runtime.multisource.LaneScheduler)
        self.listener: Callable[[], None] | None = None

    def put(self, sample: Sample, stop: threading.Event | None = None) -> bool:
        """Hand over a sample; False when the queue was closed (the consumer has gone)."""
        with self._cond:
            if self.policy is DropPolicy.BLOCK:
                while len(self._items) >= self.maxlen and not self._closed and not (stop and stop.is_set()):
                    self._cond.wait(1.0)  # woken by get() and discard(); the bound only re-checks stop
            if self._closed or (stop is not None and stop.is_set()):
                return False
            while len(self._items) >= self.maxlen:
                self._items.popleft()
                self._counters.dropped += 1
            self._items.append(sample)
            self._cond.notify_all()
        if self.listener is not None:
            self.listener()
        return True

    def get(self, timeout: float) -> Sample | None | object:
        """A sample; None on timeout; ``END`` once the reader finished and the queue is empty.

        A reader that failed for good (a camera that vanished past the reconnect bound) raises its SourceError here;
        a reader that crashed (a bug, or an application's frame iterator raising) raises that exception.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    if self._error is not None:
                        raise self._error
                    return _END
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def finish(self, error: Exception | None = None) -> None:
        """The reader is done (end of file, stopped, or failed with ``error``)."""
        with self._cond:
            self._closed = True
            self._error = self._error or error
            self._cond.notify_all()
        if self.listener is not None:
            self.listener()

    def discard(self) -> None:
        """The consumer is gone: drop what is queued and release a blocked reader."""
        with self._cond:
            self._items.clear()
            self._closed = True
            self._cond.notify_all()


END = _END


class Source(Protocol):
    """A stream of samples, read in its own thread. ``kind`` says whether it yields frames or windows."""

    kind: SampleKind
    name: str
    counters: SourceCounters

    def start(self) -> None:
        """Open the input (raising SourceError if it cannot be opened) and start the reader thread."""

    def get(self, timeout: float) -> Sample | None | object:
        """Next sample, None on timeout, END at the end (see SampleQueue.get)."""

    def close(self) -> None:
        """Stop the reader thread and release the input. Safe to call twice."""


class ThreadedSource:
    """Base for sources: subclasses implement ``_open()`` and ``_loop()``; this runs the thread and the queue."""

    kind: SampleKind = "frame"
    close_timeout_s = 2.0  # how long close() waits for the reader (longer where a read can block, e.g. streams)

    def __init__(self, name: str, policy: DropPolicy, queue_size: int = 4) -> None:
        self.name = name
        self.counters = SourceCounters()
        self.queue = SampleQueue(policy, self.counters, queue_size)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_index = 0
        self._attempts_since_sample = 0
        # set by the consumer before start(): run on each sample in the reader thread (None: skip the sample)
        self.stage: Callable[[np.ndarray], object] | None = None
        self.keep_data = True  # False: a staged sample is queued without its data (the stage kept what it needs)

    def _open(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Free the input (called from the reader thread when it ends)."""

    def _emit(self, data: np.ndarray) -> bool:
        index, ts, captured_at = self._next_index, time.time(), time.monotonic()
        self._next_index += 1
        c = self.counters
        c.captured += 1
        c.last_sample_at = captured_at
        c.fault = None
        self._attempts_since_sample = 0
        if self.stage is None:
            return self.queue.put(Sample(index, ts, captured_at, data), self._stop)
        staged = self.stage(data)
        if staged is None:  # skipped (a still frame): nothing to hand over
            return not self._stop.is_set()
        return self.queue.put(Sample(index, ts, captured_at, data if self.keep_data else None, staged), self._stop)

    def _run(self) -> None:
        error: Exception | None = None
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - SourceError, or a crash: the consumer raises it, it is no end
            error = exc
        finally:
            self._release()
            self.queue.finish(error)

    def start(self) -> None:
        try:
            self._open()
        except SourceError as exc:
            if not self._keeps_trying():
                raise
            self.counters.fault = f"{exc}; retrying"  # the reader thread reconnects, the fault is reported
            log.warning("%s", self.counters.fault)
        self.counters.opened_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"source-{self.name}", daemon=True)
        self._thread.start()

    def get(self, timeout: float) -> Sample | None | object:
        return self.queue.get(timeout)

    def close(self) -> None:
        self._stop.set()
        self.queue.discard()
        if self._thread is None:  # opened (or not) but never read: no reader thread will release the input
            self._release()
        elif self._thread is not threading.current_thread():
            self._thread.join(timeout=self.close_timeout_s)
            if self._thread.is_alive():
                log.warning("%s: reader still busy after %.0f s; leaving it", self.name, self.close_timeout_s)

    def _keeps_trying(self) -> bool:
        """True for a live source whose reconnect policy never gives up (the agent's): it starts even when the
        input is not there yet, and its reader thread keeps reopening it."""
        return False

    def _wait(self, seconds: float) -> bool:
        """Sleep unless stopped; True if the source was asked to stop."""
        return self._stop.wait(seconds)

    def _reconnect_with(self, policy: ReconnectPolicy, try_open: Callable[[], bool]) -> bool:
        """Release a live input that dropped and reopen it with backoff (``try_open()`` True: reopened).

        A reopen counts as a recovery only once a sample follows: attempts since the last sample accumulate
        across reopens that yield nothing (a stream that opens but never sends a frame), so the bound applies.
        False if the source was stopped meanwhile; SourceError once the policy's bound is reached (``give_up``),
        else the fault is reported in ``counters.fault`` and the attempts go on.
        """
        self._release()
        c = self.counters
        while True:
            n = self._attempts_since_sample
            c.fault = (f"{self.name} yields nothing; reconnecting (attempt {n + 1}, {c.stalled_s():.0f} s without "
                       "a sample)")
            if n >= policy.max_attempts and policy.give_up:
                raise SourceError(f"{self.name} yielded no sample for {c.stalled_s():.0f} s after {n} reconnect "
                                  f"attempt(s) ({c.reconnects} reopened without a sample since)")
            log.warning("%s", c.fault)
            if self._wait(policy.delay(n)):
                return False
            self._attempts_since_sample += 1
            c.reconnect_attempts += 1
            if try_open():
                c.reconnects += 1
                log.warning("%s reopened", self.name)
                return True


class IterableSource(ThreadedSource):
    """Samples from any iterable of arrays (frames from the application's own camera code, or windows): the
    Python API's way to feed a pipeline. ``kind`` says which the arrays are."""

    def __init__(self, items: Iterable[np.ndarray], kind: SampleKind = "frame", name: str = "iterable",
                 policy: DropPolicy = DropPolicy.BLOCK, queue_size: int = 4) -> None:  # fmt: skip
        super().__init__(name, policy, queue_size)
        self.kind = kind
        self._items = items

    def _open(self) -> None:
        pass

    def _loop(self) -> None:
        for item in self._items:
            if self._stop.is_set() or not self._emit(np.asarray(item)):
                return
