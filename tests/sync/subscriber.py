"""A real paho subscriber that records every message it gets (used by tests and benchmarks)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


class Subscriber:
    """Subscribes to ``topics`` with QoS 1 and keeps (topic, payload, retain) in arrival order."""

    def __init__(self, port: int, topics: list[str], *, host: str = "127.0.0.1", protocol: int = mqtt.MQTTv5,
                 username: str | None = None, password: str | None = None, tls_ca: str | None = None,
                 client_id: str | None = None) -> None:
        """With ``client_id`` the session is persistent (MQTT 3.1.1, clean_session False): the broker queues
        QoS 1 messages for it while it is away, e.g. across a broker restart."""
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.topics = topics
        if client_id is not None:
            protocol = mqtt.MQTTv311
        kwargs = {"clean_session": client_id is None} if protocol != mqtt.MQTTv5 else {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"sub-{uuid.uuid4().hex[:8]}",
                                  protocol=protocol, **kwargs)
        if username:
            self.client.username_pw_set(username, password)
        if tls_ca:
            self.client.tls_set(ca_certs=tls_ca)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect_async(host, port)
        self.client.loop_start()
        if not self._subscribed.wait(30):
            raise RuntimeError("test subscriber could not subscribe")

    def _on_connect(self, client, userdata, flags, rc, props):  # noqa: ANN001
        if not rc.is_failure:
            for t in self.topics:
                client.subscribe(t, qos=1)

    def _on_message(self, client, userdata, msg):  # noqa: ANN001
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def snapshot(self) -> list[tuple[str, bytes, bool]]:
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
