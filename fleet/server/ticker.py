"""A background job that calls ``tick()`` every ``tick_s`` seconds on its own thread until stopped; an exception in
one tick is logged with its traceback and the job goes on (the rollout and re-training runners)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger(__name__)


class Ticker:
    name = "ticker"  # the thread's name, and the log line's
    join_s = 10.0  # how long stop() waits for a tick in progress

    def __init__(self, tick_s: float) -> None:
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.join_s)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # a bug in one tick must not end the job; logged with its traceback
                log.exception("%s tick failed", self.name)
