"""Moves outbox records to MQTT in batches, QoS 1, deleting them only after the broker's PUBACK.

One thread. While the link is down it waits (records keep accumulating in the outbox, which is normal). When
connected it keeps up to ``max_in_flight`` batches unacknowledged; each batch is a run of consecutive records
of one kind, so a batch covers an id range and the ack deletes exactly that range. A batch refused by the broker
or not acknowledged in ``ack_timeout_s`` is sent again from the outbox (at-least-once: a receiver recognises
a repeat by its (outbox epoch, record id)). Batches leave in id order.

A failed batch is sent again *followed by every later record*, even those the broker already took: batches
sent after it are abandoned (their acknowledgements no longer delete anything), so the last copy of every record
arrives in id order and a receiver that keeps the latest copy, or sorts by id, sees one ordered stream per
device. Until a batch succeeds again only one batch is in flight, so a second failure cannot be overtaken. A
batch the broker keeps refusing (e.g. an ACL that denies the topic) is retried with growing backoff, at most
``max_refusals`` times, then dropped and counted: it must not block everything behind it for ever. A batch
too large for the broker (the link refuses it up front, or the broker refused it: ``PublishHandle.too_large``)
is split: it is sent again at once with half the records per message, halving again until it passes; a single
record too large even alone is dropped and counted (``dropped_oversize``). If the
outbox had to set a corrupt file aside (new epoch, ids restart), in-flight acknowledgements of the old file are
ignored and forwarding restarts at the new file's first record.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.sync.mqtt import MqttLink, PayloadTooLarge, PublishHandle
from edge_runtime.sync.outbox import Outbox, Record

log = logging.getLogger(__name__)

BATCH_SCHEMA = "batch/1"
_ENVELOPE_BYTES = 512  # room for the batch header around the records
_RECORD_BYTES = 64  # what wrapping one record adds: {"id":..,"ts":..,"data":..},


class ForwarderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_max_records: int = Field(default=500, ge=1, description="Records per MQTT message at most.")
    max_in_flight: int = Field(default=8, ge=1, description="Unacknowledged batches at a time.")
    ack_timeout_s: float = Field(default=30.0, gt=0, description="Resend a batch not acknowledged by then.")
    poll_s: float = Field(default=1.0, gt=0, description="How often to look for new records when idle.")
    retry_backoff_s: float = Field(default=2.0, ge=0, description="Pause after a failed batch; doubles per failure.")
    max_backoff_s: float = Field(default=60.0, ge=0, description="Longest pause between retries of a failed batch.")
    max_refusals: int = Field(
        default=10, ge=1, description="Broker refusals of one batch before its records are dropped (and counted)."
    )


@dataclass
class _Batch:
    first_id: int
    last_id: int
    count: int
    sent: float
    epoch: str = ""
    handle: PublishHandle | None = None
    done: bool = field(default=False)


def _topic_kind(kind: str) -> str:
    return "metrics" if kind == "metrics" else "events"


class Forwarder:
    """``start()`` a thread that drains ``outbox`` to ``link``; call :meth:`wake` after appending."""

    def __init__(self, outbox: Outbox, link: MqttLink, config: ForwarderConfig | None = None) -> None:
        self.outbox = outbox
        self.link = link
        self.config = config or ForwarderConfig()
        self._acks: queue.SimpleQueue[tuple[_Batch, bool]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._in_flight: list[_Batch] = []
        self._cursor = 0  # highest record id handed to the link
        self._paused_until = 0.0
        self._connected_since: float | None = None
        self._epoch = outbox.epoch
        self._failing: tuple[int, int] | None = None  # (first id of the failing batch, consecutive failures)
        self._refusals = 0  # broker refusals of the failing batch
        self._split: tuple[int, int] | None = None  # (last id of a too-large batch, records per message till then)
        self.counters = {"batches_sent": 0, "batches_acked": 0, "records_delivered": 0, "resends": 0,
                         "refused": 0, "dropped_oversize": 0, "dropped_refused": 0, "abandoned": 0,
                         "epoch_changes": 0, "splits": 0}
        self.last_error: str | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="outbox-forwarder", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wake(self) -> None:
        """New records are in the outbox: forward them without waiting for the next poll."""
        self._wake.set()

    # ----------------------------------------------------------------- the loop
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # a bug here must not end forwarding for good
                log.exception("outbox forwarder step failed")
                self._stop.wait(self.config.poll_s)

    def _step(self) -> None:
        self._check_epoch()
        self._drain_acks()
        self._expire()
        sent = 0
        while self._may_send() and not self._stop.is_set():
            if not self._send_next():
                break
            sent += 1
            self._drain_acks()
        if sent == 0:
            self._wake.wait(self.config.poll_s if not self._in_flight else 0.05)
            self._wake.clear()

    def _may_send(self) -> bool:
        """Connected, not backing off, and room in the window (one batch only while recovering from a failure)."""
        window = 1 if self._failing is not None else self.config.max_in_flight
        return self.link.connected and time.monotonic() >= self._paused_until and len(self._in_flight) < window

    def _check_epoch(self) -> None:
        """The outbox set a corrupt file aside: its ids restarted, so old acks must delete nothing."""
        if self.outbox.epoch == self._epoch:
            return
        log.warning("outbox epoch changed (%s -> %s); forwarding restarts from its first record", self._epoch,
                    self.outbox.epoch)
        for batch in self._in_flight:
            batch.done = True
        self._in_flight.clear()
        self._epoch, self._cursor, self._failing, self._refusals = self.outbox.epoch, 0, None, 0
        self._split = None
        self.counters["epoch_changes"] += 1

    def _send_next(self) -> bool:
        if self._split is not None and self._cursor >= self._split[0]:
            self._split = None  # the too-large batch went out in smaller pieces
        limit = self.config.batch_max_records if self._split is None else self._split[1]
        room = max(1, self.link.max_payload - _ENVELOPE_BYTES)
        records = self.outbox.pending(self._cursor, limit, max_bytes=room, overhead=_RECORD_BYTES)
        if not records:
            return False
        run = list(_same_kind_run(records))
        payload = self.encode(run)
        batch = _Batch(run[0].id, run[-1].id, len(run), time.monotonic(), self._epoch)
        try:
            handle = self.link.publish(self._topic(run[0].kind), payload, qos=1)
        except PayloadTooLarge as exc:  # over the link's limit: split it, or drop a record too large alone
            self.last_error = str(exc)
            if batch.count > 1:
                self._split_at(batch)
                return True
            self.counters["dropped_oversize"] += self.outbox.delete_range(batch.first_id, batch.last_id)
            log.error("dropping record %d: %s", batch.first_id, exc)
            self._cursor = batch.last_id
            return True
        batch.handle = handle
        self._cursor = batch.last_id
        self._in_flight.append(batch)
        self.counters["batches_sent"] += 1
        handle.add_done_callback(lambda h, b=batch: self._acks.put((b, h.acked)))
        return True

    def _topic(self, kind: str) -> str:
        t = self.link.topics
        return t.metrics(self.link.device_id) if _topic_kind(kind) == "metrics" else t.events(self.link.device_id)

    def _drain_acks(self) -> None:
        while True:
            try:
                batch, ok = self._acks.get_nowait()
            except queue.Empty:
                return
            if batch.done:
                continue  # abandoned (sent again after a failure) or from an outbox file set aside
            batch.done = True
            if batch in self._in_flight:
                self._in_flight.remove(batch)
            if ok:
                if batch.epoch == self.outbox.epoch:
                    self.outbox.delete_range(batch.first_id, batch.last_id)
                self.counters["batches_acked"] += 1
                self.counters["records_delivered"] += batch.count
                if self._failing is not None and batch.first_id >= self._failing[0]:
                    self._failing, self._refusals = None, 0
            else:
                handle = batch.handle
                refused = bool(handle is not None and handle.refused)
                self.counters["refused"] += int(refused)
                reason = handle.error if handle is not None and handle.error else "publish failed"
                self._fail(batch, reason, refused, too_large=bool(handle is not None and handle.too_large))

    def _expire(self) -> None:
        """Give up on batches unacknowledged for ack_timeout_s of connected time (paho re-sends after a
        reconnect by itself, so an outage alone is no reason to send a second copy)."""
        now = time.monotonic()
        if not self.link.connected:
            self._connected_since = None
            return
        if self._connected_since is None:
            self._connected_since = now
        for batch in list(self._in_flight):
            if not batch.done and now - max(batch.sent, self._connected_since) > self.config.ack_timeout_s:
                batch.done = True
                self._in_flight.remove(batch)
                self._fail(batch, f"no PUBACK for records {batch.first_id}..{batch.last_id}", refused=False)

    def _fail(self, batch: _Batch, reason: str, refused: bool, too_large: bool = False) -> None:
        """Send ``batch`` again, then everything after it (in order), after a backoff; bounded for refusals.
        Too large for the broker: at once, in halves (a single record is dropped)."""
        self.last_error = reason
        for later in [b for b in self._in_flight if b.first_id > batch.first_id]:
            later.done = True  # its ack must not delete: its records are sent again after this batch's
            self._in_flight.remove(later)
            self.counters["abandoned"] += 1
        if too_large:
            self._split_too_large(batch, reason)
            return
        tries = self._failing[1] + 1 if self._failing and self._failing[0] == batch.first_id else 1
        if tries == 1:
            self._refusals = 0
        self._refusals += int(refused)
        if refused and self._refusals >= self.config.max_refusals:
            n = self.outbox.delete_range(batch.first_id, batch.last_id) if batch.epoch == self.outbox.epoch else 0
            self.counters["dropped_refused"] += n
            self.last_error = f"dropped records {batch.first_id}..{batch.last_id} after {self._refusals} " \
                f"refusals: {reason}"
            log.error(self.last_error)
            self._failing, self._refusals = None, 0
            self._cursor = min(self._cursor, batch.last_id)
            return
        self._failing = (batch.first_id, tries)
        self.counters["resends"] += 1
        self._cursor = min(self._cursor, batch.first_id - 1)
        backoff = min(self.config.max_backoff_s, self.config.retry_backoff_s * 2 ** (tries - 1))
        self._paused_until = time.monotonic() + backoff

    def _split_too_large(self, batch: _Batch, reason: str) -> None:
        if batch.count == 1:
            n = self.outbox.delete_range(batch.first_id, batch.last_id) if batch.epoch == self.outbox.epoch else 0
            self.counters["dropped_oversize"] += n
            log.error("dropping record %d, too large for the broker even alone: %s", batch.first_id, reason)
            self._cursor = min(self._cursor, batch.last_id)
            return
        self._split_at(batch)
        log.warning("records %d..%d too large for the broker in one message: sending %d per message",
                    batch.first_id, batch.last_id, batch.count // 2)
        self._failing = (batch.first_id, 1)  # one batch in flight until a piece passes, as after any failure
        self._cursor = min(self._cursor, batch.first_id - 1)

    def _split_at(self, batch: _Batch) -> None:
        """Half as many records per message, until past the end of ``batch`` (or of an earlier split)."""
        last = max(batch.last_id, self._split[0]) if self._split is not None else batch.last_id
        self._split = (last, max(1, batch.count // 2))
        self.counters["splits"] += 1

    # ----------------------------------------------------------------- encoding
    def encode(self, records: list[Record]) -> bytes:
        """A batch message: header plus the records' JSON bodies, spliced without re-parsing them."""
        head = (
            f'{{"schema":"{BATCH_SCHEMA}","device":"{self.link.device_id}","outbox":"{self.outbox.epoch}",'
            f'"kind":"{records[0].kind}","first_id":{records[0].id},"last_id":{records[-1].id},'
            f'"count":{len(records)},"records":['
        )
        body = ",".join(f'{{"id":{r.id},"ts":{r.created:.3f},"data":{r.payload.decode()}}}' for r in records)
        return (head + body + "]}").encode()

    def stats(self) -> dict[str, Any]:
        return {"in_flight": len(self._in_flight), "cursor": self._cursor, "last_error": self.last_error,
                "retrying": self._failing is not None, **self.counters}


def _same_kind_run(records: list[Record]) -> Iterator[Record]:
    for r in records:
        if r.kind != records[0].kind:
            return
        yield r
