"""MQTT ingest: shared subscription for the event streams, plain subscriptions for retained state.

The pipeline is the device's in reverse: paho's network thread puts each message in a bounded queue (a full
queue blocks that thread, which is back-pressure onto TCP); one writer thread takes up to ``batch_max`` messages,
parses them, writes them in one transaction, and only after the commit sends their PUBACKs (paho 2
``manual_ack``). The session is persistent (MQTT 5, clean start off, a session expiry), so what the broker
accepted and this server did not commit is delivered again after a crash; the store is idempotent on the record
key, so a redelivery is a counted duplicate, not a second row.

Two quirks handled here: paho's ``message_callback_add`` with a ``$share/...`` filter never fires
(eclipse/paho.mqtt.python#472), so one ``on_message`` dispatches on the bare topic; and a PUBACK must never be
sent on a newer connection for a message of an older one (packet ids are reused), so messages carry the
connection generation they arrived on and stale ones are left for the broker to redeliver.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import SQLAlchemyError

from edge_runtime.sync.mqtt_settings import MqttSettings
from fleet.server.records import parse
from fleet.server.store import Store
from fleet.server.uploads import Uploads

log = logging.getLogger(__name__)

# through the shared subscription: each record to one instance
STREAMS = ("metrics", "events", "samples", "samples/upload")
RETAINED = ("state", "update/status", "desired")  # plain subscriptions: every instance keeps the latest


class IngestConfig(BaseModel):
    """How the server consumes the broker."""

    model_config = ConfigDict(extra="forbid")

    group: str = Field(default="fleet", pattern=r"^[A-Za-z0-9_-]{1,64}$",
                       description="Share group: instances in one group split the event streams.")
    client_id: str = Field(default="fleet-server", pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                           description="MQTT client id; unique per instance (it names the persistent session).")
    batch_max: int = Field(default=1000, ge=1, le=100_000, description="Messages per database transaction.")
    batch_wait_s: float = Field(default=0.1, gt=0, le=10, description="Longest wait to fill a batch.")
    queue_max: int = Field(default=4000, ge=1, description="Messages received and not yet written (bounded).")
    session_expiry_s: int = Field(default=7 * 86400, ge=0, description="How long the broker keeps the session.")
    receive_maximum: int = Field(default=2000, ge=1, le=65535, description="Unacknowledged messages in flight.")
    retry_s: float = Field(default=1.0, gt=0, description="Wait before retrying a batch the database refused.")


class Ingest:
    """Consumes the broker into a :class:`Store` until stopped."""

    def __init__(self, store: Store, settings: MqttSettings, config: IngestConfig | None = None) -> None:
        self.store, self.settings = store, settings
        self.config = config or IngestConfig()
        self.prefix = settings.prefix
        self.uploads = Uploads(store, self.prefix)  # resumable chunked sample uploads (fleet/server/uploads.py)
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(self.config.queue_max)
        self._generation = 0
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self.connected = threading.Event()
        self.counters = {"messages": 0, "records_stored": 0, "duplicates": 0, "rejected": 0, "batches": 0,
                         "db_errors": 0, "stale_acks": 0}
        self.last_lag_s: float | None = None  # commit time minus the newest record's device time, last batch
        self.last_error: str | None = None
        self.client = self._make_client()

    # ------------------------------------------------------------------ connection
    def _make_client(self) -> mqtt.Client:
        s = self.settings
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.config.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=True)
        if s.username:
            c.username_pw_set(s.username, s.password)
        if s.tls is not None:
            c.tls_set(ca_certs=str(s.tls.ca_cert) if s.tls.ca_cert else None,
                      certfile=str(s.tls.client_cert) if s.tls.client_cert else None,
                      keyfile=str(s.tls.client_key) if s.tls.client_key else None)
            c.tls_insecure_set(s.tls.insecure)
        c.reconnect_delay_set(s.reconnect_min_s, s.reconnect_max_s)
        c.on_connect, c.on_disconnect, c.on_message = self._on_connect, self._on_disconnect, self._on_message
        return c

    def filters(self) -> list[str]:
        p, g = self.prefix, self.config.group
        return [f"$share/{g}/{p}/devices/+/{k}" for k in STREAMS] + [f"{p}/devices/+/{k}" for k in RETAINED]

    def start(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.config.session_expiry_s
        props.ReceiveMaximum = self.config.receive_maximum
        self.client.connect_async(self.settings.host, self.settings.port, self.settings.keepalive,
                                  clean_start=False, properties=props)
        self._writer = threading.Thread(target=self._write_loop, name="fleet-ingest-writer", daemon=True)
        self._writer.start()
        self.client.loop_start()

    def stop(self, timeout: float = 10.0) -> None:
        """Write and acknowledge what was received, then disconnect (the session stays on the broker)."""
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            log.error(self.last_error)
            return
        self._generation += 1
        client.subscribe([(f, 1) for f in self.filters()])
        self.connected.set()
        log.info("ingest connected to %s:%s (session present: %s)", self.settings.host, self.settings.port,
                 getattr(_flags, "session_present", "?"))

    def _on_disconnect(self, _c: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._stop.is_set():
            self.last_error = f"disconnected from the broker: {reason}"
            log.warning(self.last_error)

    def _on_message(self, _c: Any, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        while True:  # blocks while the queue is full: back-pressure onto the broker, nothing dropped
            try:
                self._queue.put((self._generation, msg), timeout=0.5)
                return
            except queue.Full:
                if self._stop.is_set():
                    return  # stopping: left unacknowledged, so the broker delivers it again to the session

    # ------------------------------------------------------------------ writer
    def _take_batch(self) -> list[tuple[int, Any]]:
        try:
            batch = [self._queue.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.config.batch_wait_s
        while len(batch) < self.config.batch_max:
            try:
                batch.append(self._queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _write_loop(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._take_batch()
            if batch:
                try:
                    self._commit_then_ack(batch)
                except Exception:  # a bug must not end ingest: the batch stays unacknowledged
                    log.exception("ingest batch failed")
                    self.last_error = "ingest batch failed (see the log)"

    def _answer_uploads(self, outcomes: list[Any]) -> None:
        """After the commit: tell each uploading device what landed (only then is a completed sample stored)."""
        for out in outcomes:
            ack = self.uploads.finish(out)
            if ack is not None and out.parsed.device is not None:
                self.client.publish(self.uploads.ack_topic(out.parsed.device), json.dumps(ack).encode(), qos=1)

    def _commit_then_ack(self, batch: list[tuple[int, Any]]) -> None:
        now = time.time()
        items, outcomes = [], []
        for _, m in batch:
            if self.uploads.is_upload(m.topic):
                out = self.uploads.handle(m.topic, m.payload, now)
                outcomes.append(out)
                items.append((m.topic, m.payload, out.parsed))
            else:
                items.append((m.topic, m.payload, parse(m.topic, m.payload, self.prefix, now)))
        while True:
            try:
                res = self.store.write(items, now)
                break
            except SQLAlchemyError as exc:  # database down or locked: keep the batch, unacknowledged, retry
                self.counters["db_errors"] += 1
                self.last_error = f"database write failed: {str(exc).splitlines()[0][:300]}"
                log.error(self.last_error)
                if self._stop.wait(self.config.retry_s):
                    return  # stopping: the broker redelivers the unacknowledged batch to the next run
        self._answer_uploads(outcomes)
        done = time.time()
        newest = max((r["ts"] for _, _, p in items for tab in ("metrics", "events") for r in p.rows.get(tab, ())),
                     default=None)
        self.last_lag_s = None if newest is None else max(0.0, done - newest)
        for gen, msg in batch:
            if gen != self._generation:
                self.counters["stale_acks"] += 1  # arrived on an older connection: the broker sends it again
                continue
            self.client.ack(msg.mid, msg.qos)
        c = self.counters
        c["messages"] += len(batch)
        c["batches"] += 1
        c["records_stored"] += sum(n for k, n in res.stored.items() if k != "update_history")
        c["duplicates"] += res.duplicates
        c["rejected"] += res.rejected
