"""The link's outgoing queue, and how it keeps an oversized message from becoming a disconnect loop.

mosquitto 2.0.11 drops the connection after every PUBLISH it refuses. Over its ``message_size_limit`` under
MQTT 5 it sends no PUBACK at all ("Dropped too large PUBLISH"), and paho sends an unacknowledged message again
after every reconnect: without care, one large message is a reconnect loop for ever. (Under MQTT 3.1.1 it
acknowledges the refused message, then drops the connection once: no loop, but the message is gone, exactly as
for a 3.1.1 publish its ACL denies; the protocol gives the client no way to tell.) Three defences:

1. A limit known up front: ``max_payload`` from the settings and, under MQTT 5, the broker's Maximum Packet
   Size from CONNACK. A larger message is refused with :class:`PayloadTooLarge` before anything is sent.
2. Probing. A message larger than any the broker acknowledged on this connection is a *probe*: it goes out
   only when nothing else is unacknowledged, and larger messages wait until the broker answered it; smaller
   ones may follow it at once. So when the connection drops with a probe unanswered, the probe is to blame.
3. Strikes. A probe unanswered when the connection drops gets a strike; at :data:`STRIKES` it is refused as
   too large for the broker (handle ``too_large``), the link's limit is lowered below its size (halfway down
   to the largest payload the broker has taken), and everything behind it is sent again, in order. A PUBACK
   with reason "Packet too large" (0x95) lowers the limit the same way, without the strikes.

Messages wait here, not in paho, while offline or behind a probe. On every (re)connect the ones paho had not
had acknowledged are taken back (the link calls paho's ``drop_out_messages``) and go through the gate again in
their original order. The gate is bookkeeping only: the link makes the paho calls, outside this lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from edge_runtime.errors import EdgeRuntimeError

log = logging.getLogger(__name__)

STRIKES = 3  # drops with the same probe on the wire before it is judged too large (a coincidence needs three)
HEADER_ROOM = 256  # PUBLISH bytes besides the payload allowed for when a broker gives its packet limit


class PayloadTooLarge(EdgeRuntimeError):
    """A message is larger than the link's limit (configured, or the broker's): split it or send less."""


class PublishHandle:
    """Completion of one publish: ``wait()`` is True once the broker acknowledged it (PUBACK, QoS 1)."""

    def __init__(self, mid: int | None = None) -> None:
        self.mid = mid
        self._event = threading.Event()
        self.acked = False
        self.refused = False  # the broker refused it (a failure reason code, or too large for it)
        self.too_large = False  # refused because the broker cannot take a message this large: split it
        self.error: str | None = None
        self._callbacks: list[Callable[[PublishHandle], None]] = []
        self._lock = threading.Lock()

    def _resolve(self, acked: bool, error: str | None = None, refused: bool = False, too_large: bool = False) -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.acked, self.error, self.refused, self.too_large = acked, error, refused or too_large, too_large
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("publish callback failed")

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until acknowledged, refused or ``timeout``; True only for an acknowledgement."""
        self._event.wait(timeout)
        return self.acked

    def add_done_callback(self, cb: Callable[[PublishHandle], None]) -> None:
        """Call ``cb(handle)`` once resolved (now, if it already is), on the resolving thread."""
        with self._lock:
            if not self._event.is_set():
                self._callbacks.append(cb)
                return
        cb(self)


def packet_size(topic: str, payload_len: int) -> int:
    """Bytes of a QoS 1 PUBLISH without properties: fixed header, topic, packet id, property length, payload."""
    rest = 2 + len(topic.encode()) + 2 + 1 + payload_len
    return 1 + max(1, (rest.bit_length() + 6) // 7) + rest


Ack = tuple[bool, str | None, bool]  # the broker's answer: (acknowledged, error, too large for it)


@dataclass(eq=False)
class Outgoing:
    """One message on its way: kept until the broker acknowledged it, so it can be sent again."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    handle: PublishHandle
    strikes: int = 0

    @property
    def size(self) -> int:
        return packet_size(self.topic, len(self.payload))


@dataclass(eq=False)
class Probe:
    """A message larger than any the broker acknowledged on this connection, until the broker answers it."""

    msg: Outgoing
    mid: int | None = None  # set once paho put it on a live connection
    handed: bool = False  # paho.publish returned (on a live connection or not)
    struck: bool = False


Done = tuple[Outgoing, bool, str | None, bool]  # a message to resolve: (message, *its Ack)


class SendGate:
    """What may go to paho now, what waits, and the size limit learnt from the broker. Thread-safe."""

    def __init__(self, max_payload: int, max_queued: int) -> None:
        self.configured_max = max_payload
        self.max_queued = max_queued
        self.broker_max_packet: int | None = None  # MQTT 5 CONNACK Maximum Packet Size, when given
        self.learned_max: int | None = None  # lowered after the broker dropped the connection over a message
        self.open = False  # connected: messages may go to paho
        self._lock = threading.Lock()
        self._held: deque[Outgoing] = deque()
        self._sent: dict[int, Outgoing] = {}  # by paho mid, in send order, until acknowledged
        self._early: dict[int, Ack] = {}  # acks that beat the link's bookkeeping
        self._probe: Probe | None = None
        self._proven = (0, 0)  # largest (packet, payload) the broker took on this connection
        self._proven_payload = 0  # largest payload it ever took: the floor when the limit is lowered

    @property
    def max_payload(self) -> int:
        limits = [self.configured_max]
        if self.learned_max is not None:
            limits.append(self.learned_max)
        if self.broker_max_packet is not None:
            limits.append(self.broker_max_packet - HEADER_ROOM)
        return max(0, min(limits))

    def check(self, topic: str, payload: bytes) -> None:
        """Raise PayloadTooLarge for a message over the known limits, before it is queued."""
        n, limit = len(payload), self.max_payload
        if n > limit:
            raise PayloadTooLarge(f"payload of {n} bytes exceeds max_payload {limit} ({topic})")
        mps = self.broker_max_packet
        if mps is not None and packet_size(topic, n) > mps:
            raise PayloadTooLarge(f"message of {packet_size(topic, n)} bytes exceeds the broker's maximum packet "
                                  f"size {mps} ({topic})")

    def counts(self) -> tuple[int, int]:
        """(messages waiting here, messages with paho awaiting acknowledgement)."""
        with self._lock:
            return len(self._held), len(self._sent)

    def enqueue(self, msg: Outgoing) -> bool:
        """Queue ``msg`` behind everything else; False when the queue is full."""
        with self._lock:
            if len(self._held) + len(self._sent) >= self.max_queued:
                return False
            self._held.append(msg)
            return True

    def _ready(self) -> str | None:
        if not self.open or not self._held:
            return None
        head = self._held[0]
        if head.size <= self._proven[0] and len(head.payload) <= self._proven[1]:  # limits on either are usual
            return "plain"
        return "probe" if self._probe is None and not self._sent else None

    def has_work(self) -> bool:
        with self._lock:
            return self._ready() is not None

    def next_to_send(self) -> tuple[Outgoing, Probe | None] | None:
        """The next message for paho (and its Probe if it is one), or None if the head must wait."""
        with self._lock:
            kind = self._ready()
            if kind is None:
                return None
            msg = self._held.popleft()
            if kind == "plain":
                return msg, None
            self._probe = Probe(msg)
            return msg, self._probe

    def handed_over(self, msg: Outgoing, mid: int, probe: Probe | None, on_wire: bool) -> Ack | None:
        """paho took ``msg`` as ``mid`` (``on_wire``: on a live connection). Returns an ack that came first."""
        with self._lock:
            self._sent[mid] = msg
            if probe is not None:
                probe.handed = True
                if on_wire and self._probe is probe:
                    probe.mid = mid
                elif probe.struck:  # the drop came before it reached the wire: not its fault
                    msg.strikes -= 1
                    probe.struck = False
            return self._early.pop(mid, None)

    def not_handed_over(self, msg: Outgoing, probe: Probe | None) -> None:
        """paho refused ``msg`` outright (resolved as failed by the link): forget the probe it was."""
        with self._lock:
            if probe is not None and self._probe is probe:
                self._probe = None

    def acked(self, mid: int, ok: bool, error: str | None, too_large: bool = False) -> Done | None:
        """The broker answered ``mid``: returns the message to resolve (None if not known yet)."""
        with self._lock:
            msg = self._sent.pop(mid, None)
            if msg is None:
                self._early[mid] = (ok, error, too_large)
                return None
            probe = self._probe
            if probe is not None and probe.msg is msg:
                self._probe = None
                if ok:
                    self._proven = (max(self._proven[0], msg.size), max(self._proven[1], len(msg.payload)))
                    self._proven_payload = max(self._proven_payload, len(msg.payload))
            if too_large:
                self._lower_limit(len(msg.payload))
            return msg, ok, error, too_large

    def lost_connection(self, strike: bool) -> Outgoing | None:
        """The connection dropped; a probe on the wire gets a strike (returned, for the log)."""
        with self._lock:
            self.open = False
            probe, self._probe = self._probe, None
            if probe is None or not strike or (probe.handed and probe.mid is None):
                return None  # no probe, or one paho never put on the wire
            probe.msg.strikes += 1
            probe.struck = True
            return probe.msg

    def reopened(self, broker_max_packet: int | None) -> tuple[list[Outgoing], list[tuple[Outgoing, str]]]:
        """A new connection (paho's unacknowledged messages already dropped): requeue them first, judge the
        struck ones. Returns (messages struck out now, every message refused as too large with its reason)."""
        with self._lock:
            self._held.extendleft(reversed(list(self._sent.values())))
            self._sent.clear()
            self._early.clear()
            self._probe, self._proven = None, (0, 0)
            self.broker_max_packet = broker_max_packet
            struck = [m for m in self._held if m.strikes >= STRIKES]
            for msg in struck:
                self._lower_limit(len(msg.payload))
            refused: list[tuple[Outgoing, str]] = []
            keep: deque[Outgoing] = deque()
            for msg in self._held:
                reason = self._too_large(msg)
                if reason is None:
                    keep.append(msg)
                else:
                    refused.append((msg, reason))
            self._held = keep
            self.open = True
            return struck, refused

    def _lower_limit(self, size: int) -> None:
        floor = self._proven_payload if self._proven_payload < size else 0
        new = min(size - 1, max(floor, (floor + size) // 2))
        self.learned_max = new if self.learned_max is None else min(self.learned_max, new)

    def _too_large(self, msg: Outgoing) -> str | None:
        n = len(msg.payload)
        if msg.strikes >= STRIKES:
            return f"payload too large for the broker: it dropped the connection {msg.strikes} times over this " \
                   f"{n}-byte message"
        try:
            self.check(msg.topic, msg.payload)
        except PayloadTooLarge as exc:
            return f"payload too large for the broker: {exc}"
        return None
