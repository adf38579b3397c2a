"""Lightweight simulated devices for load tests: real metrics/1 and event/1 records in real batch/1 messages.

Many device ids share a few MQTT connections (one per :class:`Publisher`), so thousands of devices cost little;
records are numbered per device and outbox epoch exactly as a device's forwarder numbers them.
"""

from __future__ import annotations

import json
import random
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt

from edge_runtime.sync.topics import Topics


def metric_record(device: str, ts: float, version: str = "1.0.0", rng: random.Random | None = None,
                  model: str = "sim") -> dict[str, Any]:
    rng = rng or random.Random(f"{device}{ts}")  # noqa: S311 - simulated data, varied per record
    lat = 5 + rng.random() * 3
    hist = [0] * 10
    hist[rng.randrange(6, 10)] = 10
    return {"schema": "metrics/1", "device": device, "ts": round(ts, 3), "model": model, "version": version,
            "period_s": 10.0, "frames": 10, "frames_total": 10, "fps": 1.0,
            "latency_ms": {"end_to_end": {"count": 10, "mean": lat, "p50": lat, "p90": lat * 1.2, "p99": lat * 1.5,
                                          "max": lat * 2}, "inference": {"count": 10, "p50": lat * 0.6}},
            "quality": {"frames": 10, "confidence_histogram": hist},
            "pipeline": {"dropped": 0, "errors": 0}, "system": {"cpu_percent": 20 + rng.random() * 10},
            "drift": {"brightness": {"feature": "brightness", "samples": 10, "psi": round(rng.random() * 0.1, 4),
                                     "drifted": False}}}


def batch_payload(device: str, outbox: str, kind: str, first_id: int, datas: list[dict[str, Any]]) -> bytes:
    recs = [{"id": first_id + i, "ts": d["ts"], "data": d} for i, d in enumerate(datas)]
    return json.dumps({"schema": "batch/1", "device": device, "outbox": outbox, "kind": kind, "first_id": first_id,
                       "last_id": first_id + len(datas) - 1, "count": len(datas), "records": recs},
                      separators=(",", ":")).encode()


class Publisher:
    """One MQTT connection publishing batches for many simulated devices, QoS 1, waiting for every PUBACK."""

    def __init__(self, port: int, host: str = "127.0.0.1", prefix: str = "edge", client_id: str = "",
                 max_inflight: int = 200) -> None:
        self.topics = Topics(prefix)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(max_inflight)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, port)
        self.client.loop_start()
        self.next_id: dict[str, int] = {}
        self._infos: list[Any] = []
        self._lock = threading.Lock()

    def send(self, device: str, datas: list[dict[str, Any]], kind: str = "metrics", outbox: str = "sim-1") -> None:
        first = self.next_id.get(device, 1)
        self.next_id[device] = first + len(datas)
        topic = self.topics.metrics(device) if kind == "metrics" else self.topics.events(device)
        info = self.client.publish(topic, batch_payload(device, outbox, kind, first, datas), qos=1)
        with self._lock:
            self._infos.append(info)

    def flush(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        with self._lock:
            infos, self._infos = self._infos, []
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        self.flush()
        self.client.disconnect()
        self.client.loop_stop()
