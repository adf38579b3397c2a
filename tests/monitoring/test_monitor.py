"""Monitor end to end: frames in, metric records through the outbox to a real broker, HTTP endpoints, samples."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request

import cv2
import numpy as np
import pytest

from edge_runtime.device_config import DeviceConfig
from edge_runtime.monitoring.config import DriftConfig, MonitorConfig, SampleConfig
from edge_runtime.monitoring.http import MonitorHttpServer
from edge_runtime.monitoring.monitor import Monitor
from edge_runtime.monitoring.service import DeviceServices
from edge_runtime.sync.forwarder import Forwarder, ForwarderConfig
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
from edge_runtime.sync.outbox import Outbox, OutboxConfig
from tests.monitoring.helpers import frame_result, frames, manifest_with_reference
from tests.monitoring.schemas import validate, validate_batch
from tests.sync.subscriber import Subscriber

pytestmark = pytest.mark.mqtt
def test_monitor_records_flow_through_outbox_to_broker_and_endpoints_report(tmp_path, broker, signing_keys):
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, device_id="cam1"))
    fwd = Forwarder(outbox, link, ForwarderConfig(poll_s=0.05))
    cfg = MonitorConfig(period_s=3600, samples=SampleConfig(directory=tmp_path / "samples", low_confidence=0.5,
                                                            min_interval_s=0, max_files=3))
    mon = Monitor(cfg, manifest_with_reference(), outbox, device_id="cam1", on_record=fwd.wake,
                  pipeline_stats=lambda: {"dropped": 2, "errors": 0, "skipped_still": 1})
    mon.attach_link(link)
    from edge_runtime.package import load_private_key
    from edge_runtime.package.signing import TrustStore
    from edge_runtime.sync.commands import CommandHandler, new_command, sign_command
    from edge_runtime.sync.replay import SequenceStore

    commands = CommandHandler("cam1", TrustStore.from_paths([signing_keys[1]], ["operator"]),
                              SequenceStore(tmp_path / "commands.json"), mon.event)
    commands.register("upload_samples", lambda c: mon.upload_samples(c.request_id, list(c.ids), c.max))
    commands.attach(link, link.topics)
    sub = Subscriber(broker.port, ["edge/devices/cam1/#"])
    services = DeviceServices(DeviceConfig(device_id="cam1"), mon, outbox, link, fwd)
    http = MonitorHttpServer(services).start()
    link.start()
    fwd.start()
    try:
        assert link.wait_connected(10)
        fs = list(frames(60, seed=1))
        for i, f in enumerate(fs):
            unsure = i in (10, 20, 30, 40, 50)
            mon(frame_result(i, f, confidence=0.3 if unsure else 0.9, top=i % 2))
            if unsure:  # let the writer keep up, so a busy CI machine cannot turn this into a queue-full drop
                mon.samples.flush()
        record = mon.report()
        assert record["frames"] == 60 and record["latency_ms"]["inference"]["count"] == 60
        assert record["quality"]["class_histogram"] == {"a": 30, "b": 30}
        mon.flush()
        assert sub.wait_for(lambda m: any(t.endswith("/metrics") for t, _, _ in m))
        batch = next(json.loads(p) for t, p, _ in sub.snapshot() if t.endswith("/metrics"))
        validate_batch(batch)
        state = next(json.loads(p) for t, p, _ in sub.snapshot() if t.endswith("/state"))
        validate(state, "state.json")

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{http.port}/metrics", timeout=5).read().decode()
        assert ('edge_stage_latency_seconds_bucket{le="+Inf",model="unit",stage="inference",version="1.0.0"} 60.0'
                in metrics)
        assert "edge_broker_connected 1.0" in metrics and 'edge_source_frames_dropped_total{source=""} 2.0' in metrics
        health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{http.port}/health", timeout=5).read())
        assert health["model"] == {"name": "unit", "version": "1.0.0"} and health["broker"]["connected"]
        assert health["outbox"]["epoch"] == outbox.epoch and health["source"]["dropped"] == 2

        # Five low-confidence frames were captured; the cap keeps the newest three.
        mon.samples.flush()
        kept = mon.samples.list()
        assert [s["frame_index"] for s in kept] == [30, 40, 50] and len(list((tmp_path / "samples").glob("*.png"))) == 3
        (tmp_path / "cmd.json").write_bytes(sign_command(new_command("cam1", "upload_samples", max=2),
                                                         load_private_key(signing_keys[0])))
        for body in (["-m", "{broken"], ["-f", str(tmp_path / "cmd.json")]):
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/cam1/commands", *body,
                            "-q", "1"], check=True, timeout=10)
        assert sub.wait_for(lambda m: sum(t.endswith("/samples") for t, _, _ in m) == 2)
        up = [json.loads(p) for t, p, _ in sub.snapshot() if t.endswith("/samples")]
        for doc in up:
            validate(doc, "sample.json")
        img = cv2.imdecode(np.frombuffer(base64.b64decode(up[-1]["data_b64"]), np.uint8), cv2.IMREAD_COLOR)
        assert np.array_equal(img, fs[50])  # lossless: the very frame the model saw
        assert commands.counters == {"accepted": 1, "rejected": 1} and link.connected
        assert sub.wait_for(lambda m: any(b"samples_uploaded" in p for t, p, _ in m if t.endswith("/events")))
        # and every message the device published, on every topic, conforms to its schema
        for topic, payload, _ in sub.snapshot():
            kind = topic.rsplit("/", 1)[1]
            if kind == "commands":  # written by the fleet (here: the test), not by the device
                continue
            doc = json.loads(payload)
            if kind in ("metrics", "events"):
                validate_batch(doc)
            else:
                validate(doc, {"state": "state.json", "samples": "sample.json"}[kind])
    finally:
        http.stop()
        mon.close()
        fwd.stop()
        link.stop()
        sub.close()


def test_monitor_without_broker_or_outbox_keeps_records_in_memory():
    mon = Monitor(MonitorConfig(period_s=0.05, system=True))
    for i, f in enumerate(frames(20, seed=3)):
        mon(frame_result(i, f))
        time.sleep(0.01)
    mon.close()
    metrics = [d for k, d in mon.recent if k == "metrics"]
    assert metrics and sum(d["frames"] for d in metrics) == 20
    assert mon.health()["broker"] == {"configured": False} and mon.health()["outbox"] is None


def test_set_model_closes_the_old_period_and_restarts_quality_and_drift_on_the_new_reference():
    """An OTA swap: records before it are labelled with the old model, after it with the new one, and drift is
    scored against the new package's own reference statistics (or, for a device baseline, learned anew)."""
    old_m = manifest_with_reference(seed=0)
    new_m = manifest_with_reference(seed=5).model_copy(update={"version": "2.0.0"})
    mon = Monitor(MonitorConfig(period_s=3600, system=False, drift=DriftConfig(reference="package")), old_m)
    old_drift = mon.drift
    for i, f in enumerate(frames(12, seed=1)):
        mon(frame_result(i, f, top=1))
    mon.set_model(new_m)
    for i, f in enumerate(frames(7, seed=2)):
        mon(frame_result(100 + i, f, top=2))
    mon.close()
    metrics = [d for k, d in mon.recent if k == "metrics"]
    assert [(d["version"], d["frames"]) for d in metrics] == [("1.0.0", 12), ("2.0.0", 7)]
    assert mon.drift is not old_drift and mon.manifest is new_m
    assert mon.drift.reference.kind == "package" and mon.drift.reference.version == "2.0.0"
    assert mon.drift.reference.features["brightness"].center != old_drift.reference.features["brightness"].center
    changed = [d for k, d in mon.recent if k == "event" and d["type"] == "model_changed"]
    assert len(changed) == 1 and changed[0]["from"] == {"name": "unit", "version": "1.0.0"}
    assert changed[0]["version"] == "2.0.0"
    mon.set_model(new_m)  # the same model again changes nothing
    assert len([d for k, d in mon.recent if k == "event" and d["type"] == "model_changed"]) == 1
