"""The highest accepted sequence of a signed stream (desired documents, commands), kept so it never goes back.

Two copies, each written atomically and each carrying a checksum of its value: a torn, truncated, bit-flipped or
deleted copy is repaired from the other one (the owner may pass a third, ``floor``: the agent's update state
records the same value). If every copy is unusable, or all are gone although the device has a history that
proves it accepted signed documents before, the store is *lost*: the owner refuses every signed
document until an operator resets it (``edge-runtime agent --config FILE --reset-replay``, which sets the floor
to the current time, so documents signed before the reset are refused and must be re-published). It never falls
back to 0 by itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from pathlib import Path

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.fsutil import atomic_write_text

log = logging.getLogger(__name__)
SCHEMA = "replay/1"
_MAX_FILE = 4096


class ReplayError(EdgeRuntimeError):
    """A signed document's sequence is not newer than the accepted one, or the replay state is lost."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def _check(value: int) -> str:
    return hashlib.sha256(f"{SCHEMA}:{value}".encode()).hexdigest()[:16]


def _read(path: Path) -> int | str:
    """The value of one copy, or why it is unusable ("missing" or a short reason)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_FILE + 1)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    try:
        doc = json.loads(raw)
        value = doc["sequence"]
        ok = doc.get("schema") == SCHEMA and isinstance(value, int) and value >= 0 and doc.get("check") == _check(value)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        ok = False
    return int(value) if ok else "corrupt"


class SequenceStore:
    """``accept(seq)`` raises ReplayError unless ``seq`` is newer; then persists it (both copies) first."""

    def __init__(self, path: Path, *, floor: int = 0, has_history: bool = False) -> None:
        """``floor``: a value known from elsewhere (an older state file); ``has_history``: the device accepted
        signed documents before, so finding no copy at all means they were deleted, not a first start."""
        self.paths = (Path(path), Path(path).with_name(Path(path).name + ".2"))
        self._lock = threading.Lock()
        self.value: int = 0
        self.problem: str | None = None
        self._load(floor, has_history)

    def _load(self, floor: int, has_history: bool) -> None:
        found = [_read(p) for p in self.paths]
        good = [v for v in found if isinstance(v, int)]
        if good:
            self.value = max([*good, floor])
            if len(good) < len(found) or min(good) != self.value:
                log.warning("replay state %s: repairing a copy (%s)", self.paths[0], found)
                self._write()
            return
        if floor > 0:  # the owner's own state file knows the value (an upgrade, or both copies damaged)
            log.warning("replay state %s %s; restored sequence %d from the update state", self.paths[0], found, floor)
            self.value = floor
            self._write()
            return
        if all(v == "missing" for v in found) and not has_history:
            return  # first start
        self.value = 0
        self.problem = (f"replay state {self.paths[0]} is lost ({', '.join(map(str, found))}); refusing signed "
                        "documents until an operator runs `edge-runtime agent --config FILE --reset-replay`")
        log.error("%s", self.problem)

    @property
    def lost(self) -> bool:
        return self.problem is not None

    def _write(self) -> None:
        text = json.dumps({"schema": SCHEMA, "sequence": self.value, "check": _check(self.value),
                           "at": round(time.time(), 3)})
        for p in self.paths:  # one at a time: a crash between the two leaves one good copy of either value
            atomic_write_text(p, text)

    def check(self, sequence: int) -> None:
        """Raise ReplayError if ``sequence`` would be refused (lost state, or not newer than the accepted one)."""
        if self.problem is not None:
            raise ReplayError(self.problem, "replay_state_lost")
        if sequence <= self.value:
            raise ReplayError(f"sequence {sequence} is not newer than the accepted {self.value} (replay)", "replay")

    def accept(self, sequence: int) -> None:
        """Check ``sequence`` and make it the accepted one (persisted before this returns)."""
        with self._lock:
            self.check(sequence)
            self.value = sequence
            self._write()

    def advance(self, sequence: int) -> None:
        """Raise the accepted value to ``sequence`` if it is higher (no error for an equal or older one)."""
        with self._lock:
            if self.problem is None and sequence > self.value:
                self.value = sequence
                self._write()

    def reset(self, floor: int | None = None) -> int:
        """Operator action: accept only sequences after ``floor`` (default: now, in ns since the epoch)."""
        with self._lock:
            self.value = max(self.value, time.time_ns() if floor is None else floor)
            self.problem = None
            self._write()
            return self.value
