"""The persisted update state machine: one JSON record, written atomically before each irreversible step.

The record says which state the device is in, which package it is installing, from which version, and how many
times the current step was retried or interrupted. :meth:`UpdateMachine.fire` is the only way to change state:
it looks the edge up in the transition table, persists the record (temp + fsync + rename), then notifies a
listener (the agent publishes it, retained, on the update status topic).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edge_runtime.fsutil import atomic_write_text
from edge_runtime.update.states import RESTING, Event, State, next_state

log = logging.getLogger(__name__)
STATUS_SCHEMA = "update-status/1"
_HISTORY = 30


class Transition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    state: State = Field(description="State entered.")
    event: Event = Field(description="Event that led there.")
    at: float = Field(description="Unix time of the transition.")
    reason: str = Field(default="", description="Why, in a short sentence.")


class UpdateRecord(BaseModel):
    """What the device remembers about its update across crashes and power cuts."""

    model_config = ConfigDict(extra="forbid")

    state: State = Field(default=State.IDLE, description="Current state.")
    package_id: str | None = Field(default=None, description="Package being installed (archive sha256 prefix).")
    target_version: str | None = Field(default=None, description="Version being installed.")
    target_key: str | None = Field(default=None, description="Slot key of the package being installed.")
    from_key: str | None = Field(default=None, description="Slot key that served before this update.")
    from_previous: str | None = Field(
        default=None, description="Rollback target (slots' previous) before this update, restored if it fails."
    )
    rollback: bool = Field(default=False, description="The offer is an explicit, signed rollback.")
    sequence: int = Field(default=0, description="Sequence number of the desired document being applied.")
    accepted_sequence: int = Field(default=0, description="Highest desired-document sequence ever accepted.")
    retries: int = Field(default=0, ge=0, description="Retries of the current step.")
    recoveries: int = Field(default=0, ge=0, description="Restarts that found this attempt mid-way.")
    reason: str = Field(default="", description="Why the last transition happened.")
    code: str = Field(default="", description="Machine-readable reason code (e.g. signature_invalid).")
    progress: float = Field(default=0.0, ge=0, le=1, description="Download progress 0..1.")
    health: dict[str, float] = Field(default_factory=dict, description="Last health window statistics.")
    shadow: dict[str, float] = Field(default_factory=dict, description="Last shadow run: inputs, agreed, agreement.")
    failed_packages: list[str] = Field(default_factory=list, description="Package ids that failed (not retried).")
    history: list[Transition] = Field(default_factory=list, description="Recent transitions, oldest first.")


class UpdateMachine:
    """Owns the record file; thread-safe; ``max_retries`` bounds every retry loop."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[UpdateRecord], None] | None = None,
        max_retries: int = 3,
    ) -> None:
        self.path = Path(path)
        self.on_change = on_change
        self.max_retries = max_retries
        self._lock = threading.RLock()
        self.record = self._load()

    def _load(self) -> UpdateRecord:
        try:
            return UpdateRecord.model_validate_json(self.path.read_bytes())
        except FileNotFoundError:
            return UpdateRecord()
        except (ValidationError, ValueError) as exc:
            # A torn or foreign file cannot happen with atomic writes; if it does, start clean and say so.
            log.error("update state file %s is unreadable (%s); starting from idle", self.path, exc)
            return UpdateRecord(reason="state file was unreadable; reset to idle", code="state_reset")

    @property
    def state(self) -> State:
        return self.record.state

    def _persist(self) -> None:
        atomic_write_text(self.path, self.record.model_dump_json(indent=1))

    def fire(self, event: Event, reason: str = "", code: str = "", **changes: Any) -> State:
        """Apply ``event``: look up the next state, update and persist the record, notify the listener."""
        with self._lock:
            old = self.record.state
            new = next_state(old, event)
            data = self.record.model_dump()
            data.update(changes)
            if event is not Event.RETRY:
                data["retries"] = 0
            data["state"], data["reason"], data["code"] = new, reason, code
            hist = data["history"][-(_HISTORY - 1) :] + [
                Transition(state=new, event=event, at=time.time(), reason=reason).model_dump()
            ]
            data["history"] = hist
            self.record = UpdateRecord.model_validate(data)
            self._persist()
            log.info("update: %s --%s--> %s %s", old.value, event.value, new.value, reason)
        self._notify()
        return new

    def retry(self, reason: str, code: str = "") -> bool:
        """Stay in the current step for another try, or fail it once ``max_retries`` is used up."""
        with self._lock:
            if self.record.retries >= self.max_retries:
                self.fail(f"{reason} (gave up after {self.record.retries} retries)", code or "retries_exhausted")
                return False
            self.fire(Event.RETRY, reason, code, retries=self.record.retries + 1)
            return True

    def fail(self, reason: str, code: str) -> State:
        """Fire ERROR from the current state (to failed or, once the live model changed, to rolling back)."""
        return self.fire(Event.ERROR, reason, code)

    def update(self, **changes: Any) -> None:
        """Change fields without a transition (progress, counters); persisted and published."""
        with self._lock:
            data = self.record.model_dump()
            data.update(changes)
            self.record = UpdateRecord.model_validate(data)
            self._persist()
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.record)
            except Exception:  # a failing listener must not break the machine
                log.exception("update status listener failed")

    @property
    def resting(self) -> bool:
        return self.record.state in RESTING


def status_payload(record: UpdateRecord, device_id: str, serving: str | None, **extra: Any) -> bytes:
    """The retained update status message (versioned JSON)."""
    doc: dict[str, Any] = {
        "schema": STATUS_SCHEMA,
        "device": device_id,
        "state": record.state.value,
        "serving": serving,
        "package_id": record.package_id,
        "target_version": record.target_version,
        "rollback": record.rollback,
        "sequence": record.sequence,
        "reason": record.reason,
        "code": record.code,
        "progress": round(record.progress, 4),
        "retries": record.retries,
        "recoveries": record.recoveries,
        "health": record.health,
        "shadow": record.shadow,
        "failed_packages": record.failed_packages[-5:],
        "at": time.time(),
    }
    doc.update(extra)
    return json.dumps(doc).encode()
