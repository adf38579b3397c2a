"""MqttLink against a real mosquitto: state and last will, reconnects, TLS, passwords, the deploy/ ACL."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edge_runtime.sync.mqtt import MqttLink, MqttSettings, PayloadTooLarge, TlsSettings
from tests.mqtt_broker import Mosquitto, make_tls
from tests.sync.subscriber import Subscriber

pytestmark = pytest.mark.mqtt
ROOT = Path(__file__).resolve().parents[2]
ACL = (ROOT / "deploy" / "mosquitto" / "acl").read_text()


def _states(sub: Subscriber, topic: str) -> list[dict]:
    return [json.loads(p) for t, p, _ in sub.snapshot() if t == topic]


def _link(port: int, device: str = "dev1", **kw) -> MqttLink:
    kw.setdefault("reconnect_min_s", 0.2)
    kw.setdefault("reconnect_max_s", 1.0)
    return MqttLink(MqttSettings(host="127.0.0.1", port=port, device_id=device, **kw))


def test_online_state_is_retained_and_offline_is_published_on_stop(broker):
    link = _link(broker.port)
    link.update_state(model="m", version="1.0.0")
    link.start()
    assert link.wait_connected(10)
    topic = link.topics.state("dev1")
    sub = Subscriber(broker.port, [topic])  # joins late: sees the retained document
    try:
        assert sub.wait_for(lambda m: any(json.loads(p)["online"] for _, p, _ in m))
        first = _states(sub, topic)[0]
        assert first["schema"] == "state/1" and first["model"] == "m" and first["version"] == "1.0.0"
        link.stop()
        assert sub.wait_for(lambda m: not json.loads(m[-1][1])["online"])
    finally:
        sub.close()
        link.stop()


_DEVICE_SCRIPT = """
import sys, time
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
link = MqttLink(MqttSettings(host="127.0.0.1", port=int(sys.argv[1]), device_id="dev-kill"))
link.start()
assert link.wait_connected(10)
print("up", flush=True)
time.sleep(60)
"""


def test_killed_device_process_gets_offline_state_from_its_last_will(broker):
    topic = "edge/devices/dev-kill/state"
    sub = Subscriber(broker.port, [topic])
    proc = subprocess.Popen([sys.executable, "-c", _DEVICE_SCRIPT, str(broker.port)], stdout=subprocess.PIPE,
                            cwd=ROOT, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert sub.wait_for(lambda m: any(json.loads(p)["online"] for _, p, _ in m))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert sub.wait_for(lambda m: not json.loads(m[-1][1])["online"], timeout=15)
    finally:
        proc.kill()
        sub.close()


def test_broker_restart_resubscribes_and_republishes_retained_state(tmp_path):
    b = Mosquitto(tmp_path / "b", persistence=False).start()  # a restart forgets retained messages
    link = _link(b.port)
    got: list[bytes] = []
    link.subscribe(link.topics.commands("dev1"), lambda t, p: got.append(p))
    link.start()
    try:
        assert link.wait_connected(10)
        b.restart()
        deadline = time.monotonic() + 15
        while link.counters["connects"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.counters["connects"] >= 2 and link.connected
        sub = Subscriber(b.port, [link.topics.state("dev1")])
        assert sub.wait_for(lambda m: any(r and json.loads(p)["online"] for _, p, r in m))
        sub.close()
        pub = ["mosquitto_pub", "-p", str(b.port), "-t", link.topics.commands("dev1"), "-m", "ping", "-q", "1"]
        subprocess.run(pub, check=True, timeout=10)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        assert got == [b"ping"]
    finally:
        link.stop()
        b.stop()


def test_malformed_message_is_counted_and_the_link_keeps_running(broker):
    link = _link(broker.port)
    good: list[dict] = []
    link.subscribe("edge/devices/dev1/commands", lambda t, p: good.append(json.loads(p)))
    link.start()
    try:
        assert link.wait_connected(10)
        for body in ("{not json", '{"ok": 1}'):
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/dev1/commands", "-m", body,
                            "-q", "1"], check=True, timeout=10)
        deadline = time.monotonic() + 10
        while not good and time.monotonic() < deadline:
            time.sleep(0.05)
        assert good == [{"ok": 1}]
        assert link.counters["handler_errors"] == 1 and link.connected
    finally:
        link.stop()


def test_oversized_payload_is_refused_before_it_reaches_the_broker(broker):
    link = _link(broker.port, max_payload=4096)
    with pytest.raises(PayloadTooLarge):
        link.publish("edge/devices/dev1/events", b"x" * 5000)
    assert link.counters["refused_payloads"] == 1


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("secure")
    tls = make_tls(d / "tls")
    b = Mosquitto(d / "b", tls=tls, passwords={"dev1": "pw1", "dev2": "pw2", "fleet": "fpw"}, acl=ACL).start()
    yield b, tls
    b.stop()


def _secure(b, tls, user, pw, **kw) -> MqttLink:
    return _link(b.port, device=user, username=user, password=pw, tls=TlsSettings(ca_cert=tls.ca_cert), **kw)


def test_tls_with_right_password_connects_and_wrong_password_is_refused_with_backoff(secure_broker, tmp_path):
    b, tls = secure_broker
    good = MqttLink(MqttSettings(host="localhost", port=b.port, device_id="dev1", username="dev1", password="pw1",
                                 tls=TlsSettings(ca_cert=tls.ca_cert)))
    bad = _secure(b, tls, "dev1", "wrong", reconnect_min_s=0.5, reconnect_max_s=30)
    good.start()
    bad.start()
    try:
        assert good.wait_connected(10) and good.last_error is None
        deadline = time.monotonic() + 30  # generous: TLS handshakes are slow on a loaded CI machine
        while not bad.refused and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not bad.connected and bad.refused
        assert "refused" in bad.last_error and "Not authorized" in bad.last_error
        # Backoff 0.5, 1, 2, 4 s...: over the next 4 s that is at most a handful of attempts, never a storm (a
        # slower machine only makes fewer attempts, so this bound cannot be broken by load).
        first = bad.counters["connect_failures"]
        time.sleep(4)
        assert first >= 1 and bad.counters["connect_failures"] - first <= 5
    finally:
        good.stop()
        bad.stop()


def test_tls_with_a_foreign_ca_reports_a_certificate_error(secure_broker, tmp_path):
    b, _ = secure_broker
    other = make_tls(tmp_path / "other")
    link = _link(b.port, username="dev1", password="pw1", tls=TlsSettings(ca_cert=other.ca_cert))
    link.start()
    try:
        deadline = time.monotonic() + 10
        while link.last_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not link.connected
        assert "certificate verification failed" in link.last_error
    finally:
        link.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_acl_refuses_a_device_writing_another_devices_topic(secure_broker, protocol):
    b, tls = secure_broker
    sub = Subscriber(b.port, ["edge/devices/+/metrics"], host="localhost", username="fleet", password="fpw",
                     tls_ca=str(tls.ca_cert))
    link = _secure(b, tls, "dev1", "pw1", protocol=protocol)
    link.start()
    try:
        assert link.wait_connected(10) and link.protocol_in_use == protocol
        foreign = link.publish("edge/devices/dev2/metrics", b'{"forged": true}')
        own = link.publish("edge/devices/dev1/metrics", b'{"own": true}')
        assert own.wait(10)
        if protocol == "5":  # MQTT 5: the broker answers with PUBACK reason 0x87 Not authorized
            assert not foreign.wait(10) and "Not authorized" in foreign.error
        else:  # MQTT 3.1.1 has no negative PUBACK: the broker acks and silently drops
            assert foreign.wait(10)
        assert sub.wait_for(lambda m: any(t == "edge/devices/dev1/metrics" for t, _, _ in m))
        # The own message was sent after the forged one on the same connection; the broker keeps order.
        assert [t for t, _, _ in sub.snapshot()] == ["edge/devices/dev1/metrics"]
    finally:
        link.stop()
        sub.close()


def test_auto_protocol_uses_mqtt5_when_offered(broker):
    link = _link(broker.port)
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.protocol_in_use == "5" and link._client.protocol == mqtt.MQTTv5
    finally:
        link.stop()


def _wait_until(cond, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond() and time.monotonic() < deadline:
        time.sleep(0.05)
    return cond()


def test_broker_packet_limit_from_connack_refuses_oversized_messages_up_front(tmp_path):
    """MQTT 5: mosquitto advertises max_packet_size in CONNACK; the link refuses a larger message before sending
    it (a message already queued while offline included), stays connected, and smaller messages keep flowing."""
    b = Mosquitto(tmp_path / "b", message_size_limit=4096, max_packet_size=4096).start()
    sub = Subscriber(b.port, ["edge/devices/dev1/events"])
    link = _link(b.port)  # its own max_payload (256 KiB) is far above the broker's limit
    queued = link.publish("edge/devices/dev1/events", b"q" * 6000)  # before the link knows the broker's limit
    link.start()
    try:
        assert link.wait_connected(10)
        assert queued.wait(10) is False and queued.too_large and "too large" in queued.error
        assert link.status()["broker_max_packet"] == 4096 and link.max_payload < 4096
        with pytest.raises(PayloadTooLarge, match="exceeds"):
            link.publish("edge/devices/dev1/events", b"x" * 4090)
        small = [link.publish("edge/devices/dev1/events", b"%d" % i + b"." * 1000) for i in range(5)]
        assert all(h.wait(10) for h in small)
        assert sub.wait_for(lambda m: len(m) == 5)
        assert [p[:1] for _, p, _ in sub.snapshot()] == [b"0", b"1", b"2", b"3", b"4"]
        assert link.connected and link.counters["connects"] == 1 and link.counters["disconnects"] == 0
        assert link.counters["too_large_for_broker"] == 1 and link.counters["refused_payloads"] == 1
    finally:
        link.stop()
        sub.close()
        b.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_message_the_broker_drops_the_connection_over_is_no_reconnect_loop(tmp_path, protocol):
    """No advertised limit: mosquitto 2.0.11 drops the connection over a PUBLISH above message_size_limit.
    MQTT 5: no PUBACK, so paho would re-send it after every reconnect for ever; the link refuses it after a few
    reconnects and lowers its limit. MQTT 3.1.1: mosquitto acknowledges it, then drops the connection once.
    Either way the link settles connected and later messages reach a real subscriber."""
    b = Mosquitto(tmp_path / "b", message_size_limit=4096).start()
    sub = Subscriber(b.port, ["edge/devices/dev1/events"])
    link = _link(b.port, protocol=protocol)
    link.start()
    try:
        assert link.wait_connected(10)
        before = link.publish("edge/devices/dev1/events", b"before")
        big = link.publish("edge/devices/dev1/events", b"x" * 6000)
        assert big.wait(30) is False if protocol == "5" else big.wait(30)
        assert _wait_until(lambda: link.connected)
        after = [link.publish("edge/devices/dev1/events", b"after-%d" % i) for i in range(3)]
        assert before.wait(10) and all(h.wait(20) for h in after)
        assert sub.wait_for(lambda m: {b"after-0", b"after-1", b"after-2"} <= {p for _, p, _ in m})
        assert all(len(p) < 4096 for _, p, _ in sub.snapshot())
        assert link.counters["connects"] - 1 <= 5, link.status()  # a few reconnects, not a loop
        if protocol == "5":
            assert big.too_large and big.refused and "too large for the broker" in big.error
            assert link.counters["too_large_for_broker"] == 1 and link.max_payload < 6000
            assert "refused as too large" in link.last_error
            with pytest.raises(PayloadTooLarge):  # the lowered limit now refuses this size up front
                link.publish("edge/devices/dev1/events", b"x" * 6000)
        reconnects = link.counters["connects"]
        time.sleep(1.0)  # settled: no further reconnects once the message is gone
        assert link.connected and link.counters["connects"] == reconnects
    finally:
        link.stop()
        sub.close()
        b.stop()


def test_deploy_config_advertises_a_packet_limit_within_its_message_size_limit(tmp_path):
    """deploy/mosquitto/mosquitto.conf: max_packet_size <= message_size_limit, so a message the link lets through
    under the advertised packet limit is never one mosquitto drops the connection over."""
    conf = (ROOT / "deploy" / "mosquitto" / "mosquitto.conf").read_text()
    values = dict(line.split(None, 1) for line in conf.splitlines() if line and not line.startswith("#"))
    msl, mps = int(values["message_size_limit"]), int(values["max_packet_size"])
    assert 0 < mps <= msl
    b = Mosquitto(tmp_path / "b", message_size_limit=msl, max_packet_size=mps).start()
    link = _link(b.port, max_payload=4 * msl)
    link.start()
    try:
        assert link.wait_connected(10)
        assert link.status()["broker_max_packet"] == mps and link.max_payload < msl
    finally:
        link.stop()
        b.stop()


def test_messages_over_max_incoming_are_never_delivered(broker):
    """MQTT 5 Maximum Packet Size in CONNECT: the broker drops what is too large for the device before sending it,
    so an oversized desired document, command or chunk is never received, let alone parsed."""
    link = _link(broker.port, max_incoming=8192)
    got: list[bytes] = []
    link.subscribe("edge/devices/dev1/commands", lambda t, p: got.append(p))
    link.start()
    try:
        assert link.wait_connected(10)
        pub = ["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/dev1/commands", "-q", "1"]
        assert _wait_until(lambda: got or subprocess.run([*pub, "-m", "ready"], timeout=10) and False)
        got.clear()
        for body in (b"x" * 20_000, b"small"):
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/dev1/commands", "-s",
                            "-q", "1"], input=body, check=True, timeout=10)
        assert _wait_until(lambda: b"small" in got)
        assert [p for p in got if p != b"ready"] == [b"small"] and link.connected  # a late probe may trail
    finally:
        link.stop()
