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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge_runtime.package.signing import TrustStore
from edge_runtime.sync.replay import SequenceStore
from edge_runtime.sync.topics import Topics
from edge_runtime.update import steps
from edge_runtime.update.attempt import Attempt, Link, ModelHost, UpdateContext
from edge_runtime.update.desired import SignedDesired, open_desired, pin_allows, resolve
from edge_runtime.update.errors import VerificationError
from edge_runtime.update.health import LiveReport
from edge_runtime.update.http_transfer import read_token
from edge_runtime.update.machine import UpdateMachine, UpdateRecord, status_payload
from edge_runtime.update.runtime import ModelRuntime, prediction_ok
from edge_runtime.update.settings import UpdateSettings
from edge_runtime.update.slots import SlotStore
from edge_runtime.update.states import Event, State
from edge_runtime.update.transfer import package_id_for

log = logging.getLogger(__name__)
__all__ = ["COMMAND_REPLAY", "DESIRED_REPLAY", "Link", "ModelHost", "UpdateAgent"]
DESIRED_REPLAY = "desired_replay.json"
COMMAND_REPLAY = "command_replay.json"
SourceStatus = Callable[[], dict[str, Any]]


class UpdateAgent:
    """One per device. Thread-safe; ``observe`` and ``observe_error`` are the pipeline's sink and error hook,
    feeding the live report, the health window and shadow runs."""

    def __init__(
        self, settings: UpdateSettings, link: Link, runtime: ModelRuntime, topics: Topics | None = None,
        latency_budget_ms: float = 1000.0,
    ) -> None:
        root = Path(settings.state_dir)
        slots = SlotStore(root / "slots", settings.keep_versions,
                          int(settings.max_disk_mb * 1e6) if settings.max_disk_mb else None)
        machine = UpdateMachine(root / "update_state.json", self._publish, settings.max_retries)
        trust = TrustStore.load(settings.trust, settings.trusted_keys)
        self.ctx = UpdateContext(settings, machine, slots, runtime, trust, link, topics or Topics(),
                                 settings.smoke_budget_ms or latency_budget_ms)
        if settings.http_token_file is not None:  # read once, checked at start: a bad file is a config error
            self.ctx.http_token = read_token(Path(settings.http_token_file))
        # the accepted desired-document sequence, in two copies (update_state.json's copy is the fallback)
        self.ctx.replay = SequenceStore(root / DESIRED_REPLAY, floor=machine.record.accepted_sequence,
                                        has_history=slots.has_history())
        self.source_status: SourceStatus = dict
        self._source_seen: Any = None
        self._docs: dict[str, SignedDesired] = {}
        self._offers: queue.Queue[SignedDesired] = queue.Queue(maxsize=1)
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pending: Attempt | None = None
        self.rejections: list[str] = []
        self.live_report = LiveReport(self.ctx.budget_ms)
        self._reporter: threading.Thread | None = None

    # the context's parts, read by the command, tests and benchmarks
    s = property(lambda self: self.ctx.settings)
    machine = property(lambda self: self.ctx.machine)
    slots = property(lambda self: self.ctx.slots)
    trust = property(lambda self: self.ctx.trust)
    link = property(lambda self: self.ctx.link)
    topics = property(lambda self: self.ctx.topics)
    stop_event = property(lambda self: self.ctx.stop_event)
    budget_ms = property(lambda self: self.ctx.budget_ms)
    live = property(lambda self: self.ctx.serving.model)
    replay = property(lambda self: self.ctx.replay)

    # ------------------------------------------------------------------------------- reporting
    @property
    def serving(self) -> str | None:
        return self.ctx.serving.key or self.slots.pointers().active

    def _publish(self, record: UpdateRecord, **extra: Any) -> None:
        try:
            source = self.source_status()
        except Exception:  # a broken accessor must not stop a report
            log.exception("cannot read the source status")
            source = {}
        active = self.slots.pointers().active
        sha = self.slots.archive_of(active)
        payload = status_payload(record, self.s.device_id, self.serving, profile=self.s.profile,
                                 groups=list(self.s.groups), source=source, serving_key=active,
                                 serving_package_id=package_id_for(sha) if sha else None,
                                 replay_state=self.replay.problem or "ok", **extra)
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
        """Publish the serving model's attempts, errors and latency since the last report (fleet canary watch)."""
        live = self.live_report.take()
        self._publish(self.machine.record, live=live)
        return live

    def _report_loop(self) -> None:
        """Live statistics every ``live_report_s``; a change of the source's fault at once (checked each second)."""
        period = self.s.live_report_s
        next_live = self.ctx.now() + period if period > 0 else None
        while not self.stop_event.wait(min(1.0, period) if period > 0 else 1.0):
            fault = self._source_fault()
            if next_live is not None and self.ctx.now() >= next_live:
                next_live = self.ctx.now() + period
                self.publish_live()
            elif fault != self._source_seen:
                self._publish(self.machine.record)
            self._source_seen = fault

    def _source_fault(self) -> Any:
        try:
            return self.source_status().get("fault")
        except Exception:  # reported by _publish
            return None

    # ------------------------------------------------------------------------------- start / stop
    def boot(self) -> Any:
        """Recover from an interrupted update, then load and return the model that should serve."""
        self._pending = steps.recover(self.ctx)
        self.ctx.serving.model = steps.load_active(self.ctx)
        self._publish(self.machine.record)
        return self.ctx.serving.model

    def attach(self, host: ModelHost, source_status: SourceStatus | None = None) -> None:
        """``host`` swaps models between inferences; ``source_status()`` says whether the input is faulty
        (a dict with ``fault``, reported on the status topic)."""
        self.ctx.serving.host = host
        if source_status is not None:
            self.source_status = source_status

    def start(self) -> None:
        """Subscribe to the desired documents and continue an update a restart interrupted.

        The interrupted update is continued on the worker thread itself, before any offer: an offer that
        arrives meanwhile (the retained documents do, at once) waits in the queue instead of being dropped."""
        self._worker = threading.Thread(target=self._work, name="update-agent", daemon=True)
        self._worker.start()
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
        active = self.slots.pointers().active
        if active is not None and self.slots.key_for_archive(doc.sha256) == active:
            return False  # these very bytes serve (the same version with other bytes goes on, and is refused)
        if rec.package_id == doc.package_id and not self.machine.resting:
            return False
        if self.replay.lost:  # never guess the floor: refuse every document until an operator resets it
            self._reject(str(self.replay.problem), "replay_state_lost", doc.sequence)
            return False
        floor = self.replay.value
        if doc.sequence < floor or (doc.sequence == floor and rec.package_id != doc.package_id):
            self._reject(f"document sequence {doc.sequence} is older than {floor}", "replay", doc.sequence)
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
            pending, self._pending = self._pending, None
            steps.resume(pending)
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
        self.ctx.save_doc(doc)
        ptr = self.slots.pointers()
        self.machine.fire(
            Event.UPDATE_OFFERED, f"desired {doc.name} {doc.version} (seq {doc.sequence})",
            package_id=doc.package_id, target_version=doc.version, target_key=f"{doc.name}-{doc.version}",
            from_key=ptr.active, from_previous=ptr.previous, rollback=doc.rollback, sequence=doc.sequence,
            progress=0.0, recoveries=0, shadow={}, health={},
        )
        return steps.run(Attempt(self.ctx, doc, State.DOWNLOADING, signed))

    # ------------------------------------------------------------------------------- the live loop
    def observe(self, result: Any) -> None:
        """Pipeline sink: one inference that returned, for the live report, health window and shadow run."""
        serving = self.ctx.serving
        health, shadow = serving.health, serving.shadow
        pred = getattr(result, "prediction", result)
        ok, latency = prediction_ok(pred), float(pred.timings.inference_ms)
        self.live_report.record(ok, latency)
        if health is not None and getattr(pred, "version", None) in (None, health.version):
            health.record(ok, latency)
        if shadow is not None:
            shadow.offer(getattr(result, "frame", None), pred)

    def observe_error(self, exc: BaseException) -> None:
        """Pipeline error hook: one inference attempt that raised (counted by the error's class)."""
        kind = type(exc).__name__
        self.live_report.record_error(kind)
        health = self.ctx.serving.health
        if health is not None:
            health.record_error(kind)
