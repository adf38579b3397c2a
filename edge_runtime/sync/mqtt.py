"""The device's one MQTT connection: paho-mqtt 2 (callback API v2) on its own network thread.

What it promises beyond paho:
- an unreachable broker is a normal state: ``start()`` never raises for it, paho reconnects with backoff;
- a refused connection (bad credentials, not authorised, TLS failure) is a *failure*: ``connected`` stays
  False and ``last_error`` says why (frigate's ``_on_connect`` treats any CONNACK as success; not here);
- subscriptions and retained state are re-sent after every reconnect;
- a handler that raises, or a malformed payload, is logged and counted, never kills the network thread;
- an oversized message never becomes a disconnect loop (paho re-sends an unacknowledged message after every
  reconnect, and mosquitto drops the connection over one above its ``message_size_limit``): a payload over
  ``max_payload`` or, under MQTT 5, over the broker's Maximum Packet Size is refused with
  :class:`PayloadTooLarge` before anything is sent; one the broker drops the connection over anyway is refused
  after a few reconnects (handle ``too_large``) and the link's limit is lowered (see ``outgoing.py``).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_runtime.sync.mqtt_settings import MqttSettings, TlsSettings, settings_from_url
from edge_runtime.sync.outgoing import Done, Outgoing, PayloadTooLarge, Probe, PublishHandle, SendGate

__all__ = ["MqttLink", "MqttSettings", "PayloadTooLarge", "PublishHandle", "TlsSettings", "settings_from_url"]

log = logging.getLogger(__name__)

STATE_SCHEMA = "state/1"
_PACKET_TOO_LARGE = 0x95  # MQTT 5 reason code
Handler = Callable[[str, bytes], None]


class _Client(mqtt.Client):
    """paho's client with one hook: the reason a (re)connect raised, which paho itself swallows."""

    on_socket_error: Callable[[OSError], None] | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as exc:
            if self.on_socket_error is not None:
                self.on_socket_error(exc)
            raise


def _describe_socket_error(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {exc.verify_message or exc}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "broker unreachable: connection refused"
    return f"broker unreachable: {exc.strerror or exc}"


class MqttLink:
    """One device connection. Thread-safe; callbacks run on paho's network thread."""

    def __init__(
        self, settings: MqttSettings, *, client_id: str | None = None, will: tuple[str, bytes] | None | bool = True,
        announce: bool = True,
    ) -> None:
        self.settings = settings
        self.announce = announce  # publish the retained device state (online/offline); False for tools
        self.topics = settings.topics
        self.device_id = settings.device_id
        self.client_id = client_id or f"edge-{settings.device_id}"
        self._state_fields: dict[str, Any] = {}
        if will is True:
            will = (self.topics.state(self.device_id), self.state_payload(online=False))
        self._will: tuple[str, bytes] | None = will or None
        self.connected = False
        self.last_error: str | None = None
        self.refused = False
        self.protocol_in_use: str = "5" if settings.protocol in ("auto", "5") else "3.1.1"
        self.counters = {"connects": 0, "connect_failures": 0, "disconnects": 0, "handler_errors": 0,
                         "published": 0, "publish_failures": 0, "refused_payloads": 0, "received": 0,
                         "too_large_for_broker": 0}
        self._lock = threading.RLock()
        self._connected_event = threading.Event()
        self._subs: dict[str, tuple[int, list[Handler]]] = {}
        self._retained: dict[str, bytes] = {}
        self._gate = SendGate(settings.max_payload, settings.max_queued)
        self._send_lock = threading.Lock()  # one thread at a time hands messages to paho, in queue order
        self._started = False
        self._client = self._make_client()

    # ----------------------------------------------------------------- lifecycle
    def _make_client(self) -> _Client:
        s = self.settings
        proto = mqtt.MQTTv5 if self.protocol_in_use == "5" else mqtt.MQTTv311
        kwargs: dict[str, Any] = {"clean_session": True} if proto == mqtt.MQTTv311 else {}
        c = _Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=proto, **kwargs)
        if s.username is not None:
            c.username_pw_set(s.username, s.password)
        if s.tls is not None:
            c.tls_set(
                ca_certs=str(s.tls.ca_cert) if s.tls.ca_cert else None,
                certfile=str(s.tls.client_cert) if s.tls.client_cert else None,
                keyfile=str(s.tls.client_key) if s.tls.client_key else None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
            c.tls_insecure_set(s.tls.insecure)
        if self._will is not None:
            c.will_set(self._will[0], self._will[1], qos=1, retain=True)
        c.reconnect_delay_set(min_delay=max(1, round(s.reconnect_min_s)), max_delay=max(1, round(s.reconnect_max_s)))
        c._reconnect_min_delay = s.reconnect_min_s  # paho takes ints; sub-second backoff helps tests and LANs
        c._reconnect_max_delay = s.reconnect_max_s
        c.on_connect = self._on_connect
        c.on_connect_fail = self._on_connect_fail
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_error = self._on_socket_error
        return c

    def start(self) -> None:
        """Connect in the background. Never raises for an unreachable broker: offline is a normal state."""
        with self._lock:
            if self._started:
                return
            self._started = True
        if self.announce:
            self.set_retained(self.topics.state(self.device_id), self.state_payload(online=True))
        self._connect_async()

    def _connect_async(self) -> None:
        props = None
        if self.protocol_in_use == "5":  # the broker drops messages above this for us: never received, never parsed
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = self.settings.max_incoming
        try:
            self._client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive,
                                       properties=props)
        except (OSError, ValueError) as exc:  # e.g. an unresolvable host name is reported, then retried by paho
            self.last_error = f"cannot connect: {exc}"
        self._client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish the offline state (when connected), disconnect cleanly and stop the network thread."""
        with self._lock:
            if not self._started:
                return
            self._started = False
        if self.connected and self.announce:
            h = self.publish(self.topics.state(self.device_id), self.state_payload(online=False), qos=1, retain=True)
            h.wait(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self.connected = False
        self._connected_event.clear()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected_event.wait(timeout)

    # ----------------------------------------------------------------- state document
    def state_payload(self, online: bool) -> bytes:
        """The retained state document: online flag plus fields set with :meth:`update_state`."""
        doc = {"schema": STATE_SCHEMA, "device": self.device_id, "online": online, "ts": round(time.time(), 3)}
        doc.update(self._state_fields)
        return json.dumps(doc, separators=(",", ":")).encode()

    def update_state(self, **fields: Any) -> None:
        """Merge fields (model, version, update state...) into the retained state and re-publish it."""
        with self._lock:
            self._state_fields.update(fields)
        if self._started:
            self.set_retained(self.topics.state(self.device_id), self.state_payload(online=True))

    # ----------------------------------------------------------------- publish / subscribe
    @property
    def max_payload(self) -> int:
        """Largest payload publish() takes now: the configured one, lowered by what the broker said or did."""
        return self._gate.max_payload

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> PublishHandle:
        """Queue a message (QoS 1 or 2). The handle resolves True on the broker's acknowledgement, False if it
        was refused (``too_large`` when the broker cannot take it: split it) or failed."""
        if qos not in (1, 2):
            raise ValueError("QoS 1 or 2 only: the link tracks every message until the broker acknowledged it")
        if not topic or "+" in topic or "#" in topic:
            raise ValueError(f"invalid topic to publish to: {topic!r}")
        try:
            self._gate.check(topic, payload)
        except PayloadTooLarge:
            self.counters["refused_payloads"] += 1
            raise
        handle = PublishHandle()
        if not self._gate.enqueue(Outgoing(topic, bytes(payload), qos, retain, handle)):
            self.counters["publish_failures"] += 1
            handle._resolve(False, f"outgoing queue full ({self.settings.max_queued} messages)")
            return handle
        self._pump()
        return handle

    def _pump(self) -> None:
        """Hand paho every message the gate lets through. Never blocks on the send lock: a paho callback may
        call this while paho holds its own locks, and whoever holds the send lock checks again after release."""
        while self._gate.has_work():
            if not self._send_lock.acquire(blocking=False):
                return
            try:
                while (nxt := self._gate.next_to_send()) is not None:
                    self._hand_over(*nxt)
            finally:
                self._send_lock.release()

    def _hand_over(self, msg: Outgoing, probe: Probe | None) -> None:
        """paho.publish, and the bookkeeping of the mid it got (an early PUBACK is applied here)."""
        try:
            info = self._client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain)
        except ValueError as exc:  # not a valid topic for paho
            info = None
            error = str(exc)
        if info is None or info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._gate.not_handed_over(msg, probe)
            self._finish((msg, False, error if info is None else mqtt.error_string(info.rc), False), refused=False)
            return
        msg.handle.mid = info.mid
        early = self._gate.handed_over(msg, info.mid, probe, info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS)
        if early is not None:
            self._finish(self._gate.acked(info.mid, *early))

    def _finish(self, done: Done | None, refused: bool = True) -> None:
        """Resolve a message the broker answered (or paho refused) and count it."""
        if done is None:
            return
        msg, ok, error, too_large = done
        if ok:
            self.counters["published"] += 1
        else:
            self.counters["publish_failures"] += 1
            self.counters["too_large_for_broker"] += int(too_large)
            log.warning("MQTT %s (%s)", error, msg.topic)
        msg.handle._resolve(ok, error, refused=refused and not ok, too_large=too_large)

    def subscribe(self, topic: str, handler: Handler, qos: int = 1) -> None:
        """Call ``handler(topic, payload)`` for messages on ``topic`` (a filter); kept across reconnects."""
        with self._lock:
            _, handlers = self._subs.setdefault(topic, (qos, []))
            handlers.append(handler)
            self._subs[topic] = (max(qos, self._subs[topic][0]), handlers)
            self._client.message_callback_add(topic, self._dispatch_for(topic))
            send = self.connected  # decided under the lock: else _on_connect's snapshot covers this topic
        if send:
            self._client.subscribe(topic, qos=qos)

    def unsubscribe(self, topic: str) -> None:
        """Drop every handler of ``topic`` (a filter) and stop re-subscribing it after reconnects (OTA chunks)."""
        with self._lock:
            self._subs.pop(topic, None)
            self._client.message_callback_remove(topic)
        if self.connected:
            self._client.unsubscribe(topic)

    def set_retained(self, topic: str, payload: bytes) -> None:
        """Publish a retained message now (if connected) and again after every reconnect."""
        with self._lock:
            self._retained[topic] = payload
        if self.connected:
            self.publish(topic, payload, qos=1, retain=True)

    # ----------------------------------------------------------------- paho callbacks (network thread)
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        if rc.is_failure:
            self.counters["connect_failures"] += 1
            self.refused = True
            self.last_error = f"connection refused by broker: {rc.getName()}"
            log.error("MQTT %s", self.last_error)
            if self.settings.protocol == "auto" and self.protocol_in_use == "5" and rc.value in (0x84, 1):
                threading.Thread(target=self._fall_back_to_311, daemon=True).start()
            return
        self.refused = False
        self.last_error = None
        self.counters["connects"] += 1
        _no_delay(client)
        with self._send_lock:  # safe to block here: paho holds none of the locks a sender waits for
            client.drop_out_messages()  # the gate sends them again, in order, each checked against the limits
            struck, refused = self._gate.reopened(getattr(props, "MaximumPacketSize", None))
            with self._lock:  # snapshot and flag together: a subscribe() racing with this sends its topic itself
                subs = [(t, q) for t, (q, _) in self._subs.items()]
                retained = list(self._retained.items())
                self.connected = True
        self._refuse_too_large(struck, refused)
        for topic, qos in subs:
            client.subscribe(topic, qos=qos)
        for topic, payload in retained:
            try:
                self.publish(topic, payload, qos=1, retain=True)
            except PayloadTooLarge:
                log.error("retained message on %s is too large for this broker", topic)
        self._pump()
        self._connected_event.set()
        log.info("MQTT connected to %s:%s (MQTT %s)", self.settings.host, self.settings.port, self.protocol_in_use)

    def _refuse_too_large(self, struck: list[Outgoing], refused: list[tuple[Outgoing, str]]) -> None:
        """Resolve the messages the gate judged too large for the broker; log each lowering of the limit once."""
        for msg in struck:
            self.last_error = f"broker dropped the connection {msg.strikes} times over a {len(msg.payload)}-byte " \
                              f"message on {msg.topic}: refused as too large; max_payload now {self.max_payload}"
            log.error("MQTT %s", self.last_error)
        for msg, reason in refused:
            self.counters["too_large_for_broker"] += 1
            self.counters["publish_failures"] += 1
            log.debug("MQTT refusing message on %s: %s", msg.topic, reason)
            msg.handle._resolve(False, reason, too_large=True)

    def _fall_back_to_311(self) -> None:
        log.warning("broker refused MQTT 5; falling back to MQTT 3.1.1")
        self._client.loop_stop()
        self.protocol_in_use = "3.1.1"
        old = self._client
        self._client = self._make_client()
        with self._lock:
            for topic in self._subs:
                self._client.message_callback_add(topic, self._dispatch_for(topic))
        old.on_connect = old.on_disconnect = None
        if self._started:
            self._connect_async()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        self.counters["connect_failures"] += 1

    def _on_socket_error(self, exc: OSError) -> None:
        self.last_error = _describe_socket_error(exc)
        log.warning("MQTT %s", self.last_error)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        was = self.connected
        self.connected = False
        struck = self._gate.lost_connection(strike=was and self._started)
        if struck is not None:
            log.info("MQTT connection lost with a %d-byte message unconfirmed (strike %d)", len(struck.payload),
                     struck.strikes)
        self._connected_event.clear()
        if was:
            self.counters["disconnects"] += 1
            if rc.is_failure and self._started:
                self.last_error = f"disconnected: {rc.getName()}"
                log.warning("MQTT %s; reconnecting with backoff", self.last_error)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        ok = not rc.is_failure
        err = None if ok else f"publish refused by broker: {rc.getName()}"
        self._finish(self._gate.acked(mid, ok, err, too_large=rc.value == _PACKET_TOO_LARGE))
        self._pump()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        log.debug("MQTT message on %s with no handler", msg.topic)

    def _dispatch_for(self, topic_filter: str) -> Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]:
        def dispatch(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
            self.counters["received"] += 1
            with self._lock:
                handlers = list(self._subs.get(topic_filter, (0, []))[1])
            for h in handlers:
                try:
                    h(msg.topic, msg.payload)
                except Exception:  # a bad message or handler bug must not kill the network thread
                    self.counters["handler_errors"] += 1
                    log.exception("MQTT handler for %s failed on a message of %d bytes", msg.topic, len(msg.payload))

        return dispatch

    # ----------------------------------------------------------------- health
    def status(self) -> dict[str, Any]:
        """JSON-ready link status for the health endpoint."""
        held, sent = self._gate.counts()
        return {
            "host": self.settings.host,
            "port": self.settings.port,
            "connected": self.connected,
            "refused": self.refused,
            "protocol": self.protocol_in_use,
            "last_error": self.last_error,
            "pending_acks": sent,
            "queued": held,
            "max_payload": self.max_payload,
            "broker_max_packet": self._gate.broker_max_packet,
            **self.counters,
        }


def _no_delay(client: mqtt.Client) -> None:
    """Turn Nagle off: MQTT sends small request packets (SUBSCRIBE after PUBACK) that Nagle and the peer's
    delayed ACK would otherwise hold back ~40 ms each (chunked OTA transfers wait on exactly that)."""
    sock = client.socket()
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]
    except (AttributeError, OSError):  # not a TCP socket (e.g. websockets) or already closed
        pass
