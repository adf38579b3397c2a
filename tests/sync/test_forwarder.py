"""Store and forward end to end: outbox -> forwarder -> real mosquitto -> a real subscriber."""

from __future__ import annotations

import json
import threading
import time

import pytest

from edge_runtime.sync.forwarder import Forwarder, ForwarderConfig
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
from edge_runtime.sync.outbox import Outbox, OutboxConfig
from tests.mqtt_broker import Mosquitto, free_port
from tests.sync.subscriber import Subscriber

pytestmark = pytest.mark.mqtt


def _link(port: int, device: str) -> MqttLink:
    return MqttLink(MqttSettings(host="127.0.0.1", port=port, device_id=device, reconnect_min_s=0.2,
                                 reconnect_max_s=1.0))


def _check_delivery(messages, device: str, epoch: str, expected: dict[int, bytes]) -> None:
    """Every record arrived; per topic in id order; a repeat is only an exact copy of an earlier record."""
    seen: dict[int, dict] = {}
    last_new: dict[str, int] = {}
    for topic, payload, _ in messages:
        batch = json.loads(payload)
        assert batch["schema"] == "batch/1" and batch["device"] == device and batch["outbox"] == epoch
        assert topic.endswith("/metrics" if batch["kind"] == "metrics" else "/events")
        ids = [r["id"] for r in batch["records"]]
        assert ids == sorted(ids) and ids[0] == batch["first_id"] and ids[-1] == batch["last_id"]
        for r in batch["records"]:
            if r["id"] in seen:
                assert seen[r["id"]] == r, "a duplicate must be an exact repeat"
                continue
            assert r["id"] > last_new.get(topic, 0), "new records arrive in id order per topic"
            last_new[topic] = r["id"]
            seen[r["id"]] = r
            assert json.dumps(r["data"], separators=(",", ":")).encode() == expected[r["id"]]
    assert set(seen) == set(expected)


def test_records_written_across_a_broker_outage_all_arrive_in_order(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, ["edge/devices/cam1/#"], client_id="fleet-collector")  # persistent session
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    link = _link(broker.port, "cam1")
    fwd = Forwarder(outbox, link, ForwarderConfig(batch_max_records=50, max_in_flight=4, poll_s=0.1))
    expected: dict[int, bytes] = {}
    link.start()
    fwd.start()
    stop = threading.Event()

    def produce() -> None:
        i = 0
        while not stop.is_set():
            kind = "event" if i % 7 == 0 else "metrics"
            body = json.dumps({"n": i, "kind": kind}, separators=(",", ":")).encode()
            rid = outbox.append(kind, body)
            expected[rid] = body
            fwd.wake()
            i += 1
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    try:
        assert link.wait_connected(10)
        producer.start()
        time.sleep(0.5)
        broker.stop()  # outage: records pile up in the outbox
        time.sleep(1.0)
        assert not link.connected and outbox.count() > 0
        broker.start()
        time.sleep(0.5)
        stop.set()
        producer.join()
        deadline = time.monotonic() + 30
        while outbox.count() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert outbox.count() == 0
        assert sub.wait_for(lambda m: _ids(m) >= set(expected), timeout=20)
        _check_delivery([m for m in sub.snapshot() if not m[0].endswith("/state")], "cam1", outbox.epoch, expected)
        assert fwd.counters["records_delivered"] >= len(expected)
    finally:
        stop.set()
        fwd.stop()
        link.stop()
        sub.close()
        broker.stop()


def _ids(messages) -> set[int]:
    out: set[int] = set()
    for topic, payload, _ in messages:
        if not topic.endswith("/state"):
            out.update(r["id"] for r in json.loads(payload)["records"])
    return out


def test_no_reachable_broker_is_a_normal_state_records_accumulate(tmp_path):
    outbox = Outbox(OutboxConfig(path=tmp_path / "o.db"))
    link = _link(free_port(), "cam2")  # nothing listens there
    fwd = Forwarder(outbox, link, ForwarderConfig(poll_s=0.05))
    link.start()
    fwd.start()
    try:
        for i in range(20):
            assert outbox.append("metrics", b'{"n":%d}' % i) is not None
            fwd.wake()
        deadline = time.monotonic() + 5
        while link.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not link.connected and "unreachable" in link.last_error
        assert outbox.count() == 20 and fwd.counters["batches_sent"] == 0
    finally:
        fwd.stop()
        link.stop()


def test_a_single_record_too_big_for_the_link_is_dropped_not_retried_forever(tmp_path, broker):
    outbox = Outbox(OutboxConfig(path=tmp_path / "o.db", max_record_bytes=100_000))
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, device_id="cam3", max_payload=2048))
    fwd = Forwarder(outbox, link, ForwarderConfig(poll_s=0.05))
    sub = Subscriber(broker.port, ["edge/devices/cam3/metrics"])
    big = outbox.append("metrics", json.dumps({"pad": "x" * 5000}).encode())
    small = outbox.append("metrics", b'{"ok":1}')
    link.start()
    fwd.start()
    try:
        assert sub.wait_for(lambda m: len(m) >= 1, timeout=10)
        assert fwd.counters["dropped_oversize"] == 1 and big not in _ids(sub.snapshot())
        assert _ids(sub.snapshot()) == {small}
    finally:
        fwd.stop()
        link.stop()
        sub.close()
