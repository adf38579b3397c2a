"""Store and forward end to end: outbox -> forwarder -> real mosquitto -> a real subscriber."""

from __future__ import annotations

import json
import signal
import sqlite3
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
        assert _wait(lambda: fwd.counters["records_delivered"] > 0)  # records flow
        broker.stop()  # outage: records pile up in the outbox
        assert _wait(lambda: not link.connected)
        piled = outbox.count()
        assert _wait(lambda: outbox.count() > piled)  # still produced, kept while the broker is away
        broker.start()
        assert _wait(lambda: link.connected)
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


def _wait(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _last_copies_in_order(messages) -> list[int]:
    """Record ids by the position of their LAST copy (what a receiver that keeps the latest copy sees)."""
    last: dict[int, int] = {}
    pos = 0
    for topic, payload, _ in messages:
        if topic.endswith("/state"):
            continue
        for r in json.loads(payload)["records"]:
            last[r["id"]] = pos
            pos += 1
    return sorted(last, key=last.__getitem__)


_ACL_NO_EVENTS = "topic read edge/#\ntopic write edge/devices/cam7/metrics\ntopic write edge/devices/cam7/state\n"


def test_a_refused_batch_is_sent_again_before_the_records_after_it(tmp_path):
    """The broker refuses the events batch (ACL, MQTT 5 PUBACK 0x87) while taking the metrics batch after it;
    once the ACL allows events, the event and every later record are sent again, so the last copy of each
    record arrives in id order for the device."""
    broker = Mosquitto(tmp_path / "broker", acl=_ACL_NO_EVENTS).start()
    sub = Subscriber(broker.port, ["edge/devices/cam7/#"])
    outbox = Outbox(OutboxConfig(path=tmp_path / "o.db"))
    items = [("metrics", b'{"n":%d}' % i) for i in range(5)] + [("event", b'{"n":5}')] + \
        [("metrics", b'{"n":%d}' % i) for i in range(6, 11)]
    ids = outbox.append_many(items)
    link = _link(broker.port, "cam7")
    fwd = Forwarder(outbox, link, ForwarderConfig(batch_max_records=5, poll_s=0.05, retry_backoff_s=1.0,
                                                  max_backoff_s=1.0, max_refusals=1000))
    link.start()
    fwd.start()
    try:
        assert _wait(lambda: fwd.counters["refused"] >= 1)
        acl = broker.workdir / "acl"
        acl.write_text(_ACL_NO_EVENTS + "topic write edge/devices/cam7/events\n")
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto reloads its ACL file
        assert _wait(lambda: outbox.count() == 0), fwd.stats()
        assert sub.wait_for(lambda m: _ids(m) >= set(ids), timeout=20)
        assert _last_copies_in_order(sub.snapshot()) == ids
        assert fwd.counters["dropped_refused"] == 0
    finally:
        fwd.stop()
        link.stop()
        sub.close()
        broker.stop()


def test_a_batch_the_broker_always_refuses_is_dropped_after_bounded_retries(tmp_path):
    """A permanent refusal must neither retry for ever nor block the records behind it."""
    broker = Mosquitto(tmp_path / "broker", acl=_ACL_NO_EVENTS).start()
    sub = Subscriber(broker.port, ["edge/devices/cam7/metrics"])
    outbox = Outbox(OutboxConfig(path=tmp_path / "o.db"))
    ids = outbox.append_many([("metrics", b'{"n":0}'), ("event", b'{"n":1}'), ("metrics", b'{"n":2}')])
    link = _link(broker.port, "cam7")
    fwd = Forwarder(outbox, link, ForwarderConfig(poll_s=0.05, retry_backoff_s=0.05, max_backoff_s=0.2,
                                                  max_refusals=3))
    link.start()
    fwd.start()
    try:
        assert _wait(lambda: outbox.count() == 0), fwd.stats()
        assert sub.wait_for(lambda m: _ids(m) >= {ids[0], ids[2]}, timeout=20)
        assert fwd.counters["refused"] == 3 and fwd.counters["dropped_refused"] == 1
        assert "refusals" in fwd.last_error
    finally:
        fwd.stop()
        link.stop()
        sub.close()
        broker.stop()


def test_acks_from_a_set_aside_outbox_file_delete_nothing_in_the_fresh_one(tmp_path, broker):
    """After the outbox sets a corrupt file aside (new epoch, ids restart at 1), forwarding restarts at the new
    file's first record and a late acknowledgement for old ids must not delete the new records."""
    outbox = Outbox(OutboxConfig(path=tmp_path / "o.db"))
    link = _link(broker.port, "cam8")
    fwd = Forwarder(outbox, link, ForwarderConfig(poll_s=0.05))
    sub = Subscriber(broker.port, ["edge/devices/cam8/metrics"])
    old = outbox.append_many([("metrics", b'{"old":%d}' % i) for i in range(30)])
    link.start()
    fwd.start()
    try:
        assert _wait(lambda: outbox.count() == 0)
        first_epoch = outbox.epoch
        outbox._recover_if_corrupt(sqlite3.DatabaseError("database disk image is malformed"))  # the real path
        assert outbox.epoch != first_epoch
        new = outbox.append_many([("metrics", b'{"new":%d}' % i) for i in range(5)])
        assert max(new) < max(old)  # ids restarted: the forwarder's old cursor is past them
        fwd.wake()
        assert _wait(lambda: outbox.count() == 0), fwd.stats()
        assert sub.wait_for(lambda m: any(json.loads(p)["outbox"] == outbox.epoch for _, p, _ in m), timeout=20)
        got = {r["id"] for _, p, _ in sub.snapshot() if json.loads(p)["outbox"] == outbox.epoch
               for r in json.loads(p)["records"]}
        assert got == set(new) and fwd.counters["epoch_changes"] == 1
    finally:
        fwd.stop()
        link.stop()
        sub.close()


@pytest.mark.parametrize("advertised", [False, True], ids=["no-advertised-limit", "max-packet-size"])
def test_batches_too_large_for_the_broker_are_split_and_every_record_arrives(tmp_path, advertised):
    """The broker takes 6,000-byte messages; 100-record batches are ~20 kB. Without an advertised limit mosquitto
    drops the connection over each (MQTT 5: no PUBACK): the link refuses the batch after a few reconnects and the
    forwarder halves it. With max_packet_size the link knows the limit and batches fit from the start. Either
    way every record arrives, none is dropped, and the last copy of each arrives in id order."""
    broker = Mosquitto(tmp_path / "broker", message_size_limit=6000,
                       max_packet_size=6000 if advertised else 0).start()
    sub = Subscriber(broker.port, ["edge/devices/cam9/metrics"])
    outbox = Outbox(OutboxConfig(path=tmp_path / "o.db"))
    bodies = [json.dumps({"n": i, "pad": "p" * 150}, separators=(",", ":")).encode() for i in range(300)]
    ids = outbox.append_many([("metrics", b) for b in bodies])
    link = _link(broker.port, "cam9")
    fwd = Forwarder(outbox, link, ForwarderConfig(batch_max_records=100, poll_s=0.05, ack_timeout_s=60))
    link.start()
    fwd.start()
    try:
        assert _wait(lambda: outbox.count() == 0, timeout=60), (fwd.stats(), link.status())
        assert sub.wait_for(lambda m: _ids(m) >= set(ids), timeout=20)
        msgs = sub.snapshot()
        assert all(len(p) <= 6000 for _, p, _ in msgs)
        got = {r["id"]: json.dumps(r["data"], separators=(",", ":")).encode()
               for _, p, _ in msgs for r in json.loads(p)["records"]}
        assert got == dict(zip(ids, bodies, strict=True))
        assert _last_copies_in_order(msgs) == sorted(ids)
        assert fwd.counters["dropped_oversize"] == 0 and fwd.counters["dropped_refused"] == 0
        if advertised:
            assert link.counters["connects"] == 1 and fwd.counters["splits"] == 0
        else:
            assert fwd.counters["splits"] >= 1 and link.counters["too_large_for_broker"] >= 1
            assert link.connected and link.max_payload < 20_000
    finally:
        fwd.stop()
        link.stop()
        sub.close()
        broker.stop()
