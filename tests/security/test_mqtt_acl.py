"""The sample broker configuration in deploy/mosquitto/ (mosquitto.conf + acl, passwords made with
mosquitto_passwd), run as is by a real mosquitto: every write the ACL denies gets MQTT 5 PUBACK reason code 0x87
(Not authorized) and reaches no subscriber; every allowed write is acknowledged and delivered."""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mqtt_broker import free_port, make_tls, mosquitto_binary

pytestmark = pytest.mark.mqtt
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
USERS = {"cam-1": "pw-cam-1", "cam-2": "pw-cam-2", "fleet": "pw-fleet"}
NOT_AUTHORIZED = 0x87
ACCEPTED = (0x00, 0x10)  # Success, or No matching subscribers (the broker took it; nobody listens yet)

DEVICE_ALLOWED = ["state", "metrics", "events", "samples", "samples/upload", "update/status"]
DEVICE_DENIED = [
    "edge/devices/cam-1/desired", "edge/devices/cam-1/commands",  # its own inputs (an empty retained publish
    "edge/devices/cam-1/update", "edge/devices/cam-1/anything",   # there would delete the fleet's document)
    "edge/devices/cam-1/feedback",  # labels are the fleet's to give
    "edge/devices/cam-1/samples/ack", "edge/fleet/policy", "edge/groups/lobby/policy",  # the fleet's answers
    "edge/devices/cam-2/samples/upload",
    "edge/devices/cam-2/state", "edge/devices/cam-2/metrics", "edge/devices/cam-2/samples",  # another device
    "edge/devices/cam-2/desired", "edge/devices/cam-2/commands",
    "edge/groups/lobby/desired", "edge/packages/abc123abc123abc1/meta", "edge/packages/abc123abc123abc1/chunks/0",
    "edge/other",
]
FLEET_ALLOWED = ["edge/devices/cam-1/desired", "edge/devices/cam-1/commands", "edge/devices/cam-1/feedback",
                 "edge/groups/lobby/desired", "edge/fleet/policy", "edge/groups/lobby/policy",
                 "edge/devices/cam-1/samples/ack",
                 "edge/packages/abc123abc123abc1/meta", "edge/packages/abc123abc123abc1/chunks/3"]
FLEET_DENIED = [f"edge/devices/cam-1/{t}" for t in DEVICE_ALLOWED] + ["edge/other"]


class Client:
    """A plain paho MQTT 5 client that records PUBACK and SUBACK reason codes and received messages."""

    def __init__(self, port: int, ca: Path, user: str | None, password: str | None) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{user}-{uuid.uuid4().hex[:6]}",
                             protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password)
        self.c.tls_set(ca_certs=str(ca))
        self.connack: int | None = None
        self.acks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self.cond = threading.Condition()
        self.c.on_connect = self._on_connect
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.connect("localhost", port)
        self.c.loop_start()

    def _on_connect(self, c, u, flags, rc, props):  # noqa: ANN001
        with self.cond:
            self.connack = rc.value
            self.cond.notify_all()

    def _on_publish(self, c, u, mid, rc, props):  # noqa: ANN001
        with self.cond:
            self.acks[mid] = rc.value
            self.cond.notify_all()

    def _on_subscribe(self, c, u, mid, rcs, props):  # noqa: ANN001
        with self.cond:
            self.subacks[mid] = [r.value for r in rcs]
            self.cond.notify_all()

    def _on_message(self, c, u, msg):  # noqa: ANN001
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait(self, pred, timeout: float = 15.0) -> bool:  # noqa: ANN001
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish with QoS 1; return the PUBACK reason code (0 for every code that means accepted)."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        assert self.wait(lambda: mid in self.acks), f"no PUBACK for {topic}"
        return 0 if self.acks[mid] in ACCEPTED else self.acks[mid]

    def subscribe(self, topic: str) -> int:
        _, mid = self.c.subscribe(topic, qos=1)
        assert self.wait(lambda: mid in self.subacks), f"no SUBACK for {topic}"
        return self.subacks[mid][0]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _sample_conf(work: Path, port: int) -> Path:
    """deploy/mosquitto/mosquitto.conf with only its paths, listener address and log target made local."""
    tls = make_tls(work / "tls")
    passwd = work / "passwd"
    passwd.write_text("")
    for user, pw in USERS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, pw], check=True, capture_output=True)
    (work / "acl").write_text((DEPLOY / "acl").read_text())
    (work / "ca.crt").write_bytes(tls.ca_cert.read_bytes())
    (work / "server.crt").write_bytes(tls.server_cert.read_bytes())
    (work / "server.key").write_bytes(tls.server_key.read_bytes())
    text = (DEPLOY / "mosquitto.conf").read_text().replace("/etc/mosquitto/edge/", f"{work}/")
    text = text.replace("/var/lib/mosquitto/", f"{work}/")
    text = re.sub(r"^listener 8883$", f"listener {port} 127.0.0.1", text, flags=re.M)
    text = text.replace("log_dest syslog", "log_dest stdout")
    if subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip() == "0":
        text += "\nuser root\n"  # mosquitto drops root to user 'mosquitto', which cannot read the test's files
    assert f"listener {port} 127.0.0.1" in text and "acl_file" in text and "allow_anonymous false" in text
    conf = work / "mosquitto.conf"
    conf.write_text(text)
    return conf


@pytest.fixture(scope="module")
def sample_broker(tmp_path_factory):  # noqa: ANN201
    work = tmp_path_factory.mktemp("acl")
    port = free_port()
    conf = _sample_conf(work, port)
    log = open(work / "mosquitto.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([mosquitto_binary(), "-c", str(conf)], stdout=log, stderr=log)
    clients: list[Client] = []
    deadline = time.monotonic() + 20
    while True:  # wait until it listens (TLS setup takes a while on a loaded machine)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, (work / "mosquitto.log").read_text()[-2000:]
            time.sleep(0.05)

    def connect(user: str | None) -> Client:
        c = Client(port, work / "ca.crt", user, USERS.get(user or "", "x"))
        clients.append(c)
        assert c.wait(lambda: c.connack is not None), (work / "mosquitto.log").read_text()[-2000:]
        return c

    try:
        yield connect
    finally:
        for c in clients:
            c.close()
        proc.terminate()
        proc.wait(10)
        log.close()


def test_device_writes_only_its_own_reports(sample_broker):
    watcher = sample_broker("fleet")
    assert watcher.connack == 0 and watcher.subscribe("edge/#") == 1  # granted QoS 1
    cam = sample_broker("cam-1")
    assert cam.connack == 0
    for sub in DEVICE_ALLOWED:
        assert cam.publish(f"edge/devices/cam-1/{sub}", b"{}") == 0, sub
    for topic in DEVICE_DENIED:
        assert cam.publish(topic, b"forged") == NOT_AUTHORIZED, topic
    marker = "edge/devices/cam-1/events"
    assert cam.publish(marker, b"last") == 0  # sent after every denied one, on the same connection
    assert watcher.wait(lambda: (marker, b"last") in watcher.messages)
    got = [t for t, _ in watcher.messages]
    assert sorted(set(got)) == sorted(f"edge/devices/cam-1/{s}" for s in DEVICE_ALLOWED)
    assert not any(p == b"forged" for _, p in watcher.messages)


def test_device_cannot_delete_its_desired_document_and_reads_only_its_inputs(sample_broker):
    fleet = sample_broker("fleet")
    assert fleet.publish("edge/devices/cam-1/desired", b"signed-doc", retain=True) == 0
    cam = sample_broker("cam-1")
    assert cam.publish("edge/devices/cam-1/desired", b"", retain=True) == NOT_AUTHORIZED  # the attack
    assert cam.subscribe("edge/devices/cam-1/desired") == 1
    assert cam.wait(lambda: ("edge/devices/cam-1/desired", b"signed-doc") in cam.messages)
    for topic in ("edge/devices/cam-1/commands", "edge/packages/abc123abc123abc1/chunks/0",
                  "edge/groups/lobby/desired", "edge/groups/lobby/policy", "edge/fleet/policy",
                  "edge/devices/cam-1/samples/ack"):
        assert cam.subscribe(topic) == 1, topic
    # Another device's samples (camera frames) and the whole tree are not readable. mosquitto 2.0 grants such a
    # SUBSCRIBE and applies the read ACL to each message it would deliver: nothing of cam-2's arrives.
    for topic in ("edge/devices/cam-2/samples", "edge/#", "edge/devices/+/samples", "edge/devices/cam-2/samples/ack"):
        cam.subscribe(topic)
    other = sample_broker("cam-2")
    assert other.publish("edge/devices/cam-2/samples", b"frame") == 0
    assert fleet.publish("edge/devices/cam-2/samples/ack", b"ack") == 0
    assert other.publish("edge/devices/cam-2/state", b"state") == 0
    assert fleet.publish("edge/devices/cam-1/commands", b"cmd") == 0  # after cam-2's, delivered in order
    assert cam.wait(lambda: ("edge/devices/cam-1/commands", b"cmd") in cam.messages)
    assert not any(t.startswith("edge/devices/cam-2") for t, _ in cam.messages)


def test_fleet_writes_what_devices_act_on_and_cannot_forge_reports(sample_broker):
    fleet = sample_broker("fleet")
    for topic in FLEET_ALLOWED:
        assert fleet.publish(topic, b"{}") == 0, topic
    for topic in FLEET_DENIED:
        assert fleet.publish(topic, b"forged") == NOT_AUTHORIZED, topic


def test_anonymous_and_wrong_password_are_refused(sample_broker):
    assert sample_broker(None).connack == 0x87  # Not authorized (allow_anonymous false)
    c = sample_broker("nobody")
    assert c.connack in (0x86, 0x87)  # Bad user name or password / Not authorized
