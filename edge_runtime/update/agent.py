"""The device-side update agent: desired document in, verified model serving out, every step reported.

Wiring: the MQTT link delivers signed desired documents (device and group topics); a worker thread applies the
chosen one through the state machine -- download (chunked, resumable), verify, install into the inactive slot,
load and smoke-test, optional shadow run, swap between two inferences (``host.swap_model``), health window --
and switches back by itself when anything after the swap goes wrong. On start, :meth:`boot` finishes or undoes
whatever a crash interrupted, then returns the model to serve.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edge_runtime.fsutil import atomic_write_bytes
from edge_runtime.package.signing import TrustStore
from edge_runtime.package.store import read_manifest
from edge_runtime.sync.topics import Topics
from edge_runtime.update import steps
from edge_runtime.update.desired import SignedDesired, open_desired, pin_allows, resolve
from edge_runtime.update.errors import UpdateError, VerificationError
from edge_runtime.update.health import HealthWindow, LiveReport
from edge_runtime.update.machine import UpdateMachine, UpdateRecord, status_payload
from edge_runtime.update.runtime import ModelRuntime, agree, prediction_ok
from edge_runtime.update.settings import UpdateSettings
from edge_runtime.update.slots import SlotStore
from edge_runtime.update.states import Event, State

log = logging.getLogger(__name__)


class ModelHost(Protocol):
    """Whatever serves inferences (edge_runtime.pipeline.Pipeline): swaps models between two inferences."""

    def swap_model(self, new_model: Any) -> Any: ...


class Link(Protocol):
    def subscribe(self, topic: str, handler: Callable[[str, bytes], None], qos: int = 1) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def set_retained(self, topic: str, payload: bytes) -> None: ...


class UpdateAgent:
    """One per device. Thread-safe; ``observe`` is a pipeline sink feeding the health window and shadow runs."""

    def __init__(
        self, settings: UpdateSettings, link: Link, runtime: ModelRuntime, topics: Topics | None = None,
        latency_budget_ms: float = 1000.0,
    ) -> None:
        self.s = settings
        self.link = link
        self.runtime = runtime
        self.topics = topics or Topics()
        self.budget_ms = settings.smoke_budget_ms or latency_budget_ms
        self.trust = TrustStore.load(settings.trust, settings.trusted_keys)
        root = Path(settings.state_dir)
        self.slots = SlotStore(root / "slots", settings.keep_versions,
                               int(settings.max_disk_mb * 1e6) if settings.max_disk_mb else None)
        self.downloads = root / "downloads"
        self._doc_file = root / "desired.json"
        self.machine = UpdateMachine(root / "update_state.json", self._publish, settings.max_retries)
        self.host: ModelHost | None = None
        self.error_count: Callable[[], int] = lambda: 0
        self.live: Any = None
        self.stop_event = threading.Event()
        self._docs: dict[str, SignedDesired] = {}
        self._offers: queue.Queue[SignedDesired] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._health: HealthWindow | None = None
        self._shadow: steps.Shadow | None = None
        self._worker: threading.Thread | None = None
        self.rejections: list[str] = []
        self._resume: tuple[State, Any] | None = None
        self.live_report = LiveReport(self.budget_ms)
        self._reporter: threading.Thread | None = None

    # ------------------------------------------------------------------------------- reporting
    @property
    def serving(self) -> str | None:
        m = getattr(self.live, "manifest", None)
        return f"{m.name}-{m.version}" if m is not None else self.slots.pointers().active

    def _publish(self, record: UpdateRecord, **extra: Any) -> None:
        payload = status_payload(record, self.s.device_id, self.serving, profile=self.s.profile,
                                 groups=list(self.s.groups), **extra)
        try:
            self.link.set_retained(self.topics.update_status(self.s.device_id), payload)
            update_state = getattr(self.link, "update_state", None)
            if callable(update_state):
                update_state(model=self.serving, update=record.state.value, update_reason=record.reason)
        except Exception:  # reporting must never stop an update or a rollback
            log.exception("cannot publish update status")

    def _reject(self, reason: str, code: str, sequence: int | None = None) -> None:
        log.warning("desired document rejected: %s", reason)
        self.rejections.append(code)
        self._publish(self.machine.record, rejected=code, rejected_reason=reason, rejected_sequence=sequence)

    def publish_live(self) -> dict[str, float]:
        """Publish the serving model's error and latency statistics since the last report (fleet canary watch)."""
        try:
            errors = int(self.error_count())
        except Exception:  # a host that cannot count errors reports what the sink saw
            errors = 0
        live = self.live_report.take(errors)
        self._publish(self.machine.record, live=live)
        return live

    def _report_loop(self) -> None:
        while not self.stop_event.wait(self.s.live_report_s):
            self.publish_live()

    # ------------------------------------------------------------------------------- start / stop
    def boot(self) -> Any:
        """Recover from an interrupted update, then load and return the model that should serve."""
        steps.recover(self)
        self.live = steps.load_active(self)
        self._publish(self.machine.record)
        return self.live

    def attach(self, host: ModelHost, error_count: Callable[[], int] | None = None) -> None:
        self.host = host
        if error_count is not None:
            self.error_count = error_count

    def start(self) -> None:
        """Subscribe to the desired documents and continue an update a restart interrupted.

        The interrupted update is continued on the worker thread itself, before any offer: an offer that
        arrives meanwhile (the retained documents do, at once) waits in the queue instead of being dropped."""
        self._worker = threading.Thread(target=self._work, name="update-agent", daemon=True)
        self._worker.start()
        if self.s.live_report_s > 0:
            self._reporter = threading.Thread(target=self._report_loop, name="update-live", daemon=True)
            self._reporter.start()
        self.link.subscribe(self.topics.desired(self.s.device_id), self._on_desired)
        for g in self.s.groups:
            self.link.subscribe(self.topics.group_desired(g), self._on_desired)

    def stop(self) -> None:
        self.stop_event.set()
        for t in (self._worker, self._reporter):
            if t is not None:
                t.join(timeout=10)

    # ------------------------------------------------------------------------------- desired documents
    def _on_desired(self, topic: str, payload: bytes) -> None:
        """Network thread: check the document, remember it, offer the resolved one to the worker."""
        with self._lock:
            if not payload:
                self._docs.pop(topic, None)
            else:
                try:
                    doc = open_desired(payload, self.trust)
                except VerificationError as exc:
                    self._reject(str(exc), exc.code)
                    return
                if not self._addressed_here(topic, doc):
                    self._reject(f"document for {doc.document.scope} {doc.document.target} arrived on {topic}",
                                 "wrong_target", doc.document.sequence)
                    return
                self._docs[topic] = doc
            dev = self._docs.get(self.topics.desired(self.s.device_id))
            groups = [d for t, d in self._docs.items() if t != self.topics.desired(self.s.device_id)]
            chosen = resolve(dev, groups)
        if chosen is not None:
            self._offer(chosen)

    def _addressed_here(self, topic: str, signed: SignedDesired) -> bool:
        """A signed document counts only on the topic it was signed for (no copying a group's to another)."""
        doc = signed.document
        if topic == self.topics.desired(self.s.device_id):
            return doc.scope == "device" and doc.target == self.s.device_id
        return doc.scope == "group" and topic == self.topics.group_desired(doc.target)

    def _wanted(self, signed: SignedDesired) -> bool:
        """Whether ``signed`` should be applied now (pin, already serving, replay, already failed).

        Checked when the document arrives and again on the worker right before applying it: meanwhile another
        update may have raised the accepted sequence, which turns a queued older document into a replay."""
        doc, rec = signed.document, self.machine.record
        if not pin_allows(doc, self.s.pin_version):
            self._reject(f"device is pinned to {self.s.pin_version}; ignoring {doc.version}", "pinned", doc.sequence)
            return False
        if self.serving == f"{doc.name}-{doc.version}" or rec.package_id == doc.package_id and not self.machine.resting:
            return False
        if doc.sequence < rec.accepted_sequence or (doc.sequence == rec.accepted_sequence and rec.package_id
                                                     != doc.package_id):
            self._reject(f"document sequence {doc.sequence} is older than {rec.accepted_sequence}", "replay",
                         doc.sequence)
            return False
        # this very document already failed: only a newer signed document tries the package again
        return not (doc.package_id in rec.failed_packages and doc.sequence <= rec.sequence)

    def _offer(self, signed: SignedDesired) -> None:
        if not self._wanted(signed):
            return
        try:
            self._offers.get_nowait()  # only the newest offer matters
        except queue.Empty:
            pass
        self._offers.put(signed)

    def _work(self) -> None:
        try:
            steps.resume_pending(self)
        except Exception:  # a bug: log it, keep serving the live model
            log.exception("resuming the interrupted update failed unexpectedly")
        while not self.stop_event.is_set():
            try:
                signed = self._offers.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                if self._wanted(signed):
                    self.apply(signed)
            except Exception:  # a bug: log it, keep serving the live model
                log.exception("update agent failed unexpectedly")

    # ------------------------------------------------------------------------------- one update
    def apply(self, signed: SignedDesired) -> State:
        """Run one offer through the state machine to committed or failed (the live model always serves)."""
        doc = signed.document
        if not self.machine.resting:
            return self.machine.state
        atomic_write_bytes(self._doc_file, doc.model_dump_json(by_alias=True).encode())
        self.machine.fire(
            Event.UPDATE_OFFERED, f"desired {doc.name} {doc.version} (seq {doc.sequence})",
            package_id=doc.package_id, target_version=doc.version, target_key=f"{doc.name}-{doc.version}",
            from_key=self.slots.pointers().active, rollback=doc.rollback, sequence=doc.sequence, progress=0.0,
            recoveries=0, shadow={}, health={},
        )
        return self.run_from(State.DOWNLOADING, doc)

    def run_from(self, state: State, doc: Any) -> State:
        """Continue an update from ``state`` (used by apply and by crash recovery)."""
        try:
            return steps.run_steps(self, state, doc)
        except UpdateError as exc:
            return steps.fail(self, str(exc), exc.code, doc)
        except Exception as exc:  # e.g. an unreadable archive or an I/O error: never leave the machine mid-step
            log.exception("update step failed unexpectedly")
            return steps.fail(self, f"unexpected error: {exc}", "internal_error", doc)

    # ------------------------------------------------------------------------------- the live loop
    def observe(self, result: Any) -> None:
        """Pipeline sink: feed the health window and the shadow run (cheap; never raises)."""
        health, shadow = self._health, self._shadow
        pred = getattr(result, "prediction", result)
        ok, latency = prediction_ok(pred), float(getattr(result, "end_to_end_ms", pred.timings.total_ms))
        self.live_report.record(ok, latency)
        if health is not None:
            health.record(ok, latency)
        if shadow is not None:
            shadow.offer(getattr(result, "frame", None), pred)

    def dwell(self, state: State) -> None:
        seconds = self.s.dwell_s.get(state, 0.0)
        if seconds:
            self.stop_event.wait(seconds)

    def installed_version(self) -> str | None:
        key = self.slots.pointers().active
        if key is None or not self.slots.has(key):
            return None
        return read_manifest(self.slots.path(key))[0].version

    @staticmethod
    def agree(a: Any, b: Any) -> bool:
        return agree(a, b)

    def now(self) -> float:
        return time.monotonic()
