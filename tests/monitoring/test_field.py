"""Field accuracy: detection precision/recall at the deployed threshold, and labels over MQTT that are taken only
when an operator key signed them for this device and run (a real mosquitto)."""

from __future__ import annotations

import subprocess
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.device_config import DeviceConfig
from edge_runtime.monitoring.config import FieldConfig, MonitorConfig
from edge_runtime.monitoring.feedback import sign_feedback
from edge_runtime.monitoring.field import FieldAccuracy, match
from edge_runtime.monitoring.monitor import Monitor
from edge_runtime.monitoring.service import DeviceServices
from edge_runtime.package.signing import OPERATOR, RELEASE, TrustStore
from edge_runtime.results import Detection, Prediction
from edge_runtime.sync.mqtt import MqttLink, MqttSettings
from tests.monitoring.helpers import frame_result


def test_detections_are_matched_by_class_and_iou_into_precision_and_recall():
    f = FieldAccuracy(FieldConfig(window=10, min_labels=1))
    dets = (Detection((0, 0, 10, 10), 0.9, 0), Detection((20, 20, 30, 30), 0.8, 0), Detection((50, 50, 60, 60), 0.7, 1))
    f.record(7, Prediction(task="detection", detections=dets))
    # truth: the first box (shifted a little), a box the device missed, and the third box with another class
    assert f.label({"id": 7, "boxes": [[1, 1, 11, 11, 0], [80, 80, 90, 90, 0], [50, 50, 60, 60, 0]]}) == "joined"
    assert f.figures() == {"labels_in_window": 1, "precision": round(1 / 3, 4), "recall": round(1 / 3, 4)}
    assert match(((( 0.0, 0.0, 10.0, 10.0), 0),), [((0.0, 0.0, 10.0, 10.0), 0)] * 2, 0.5) == (1, 0, 1)
    for bad in ({"id": 7, "boxes": [[0, 0, 1]]}, {"id": 7, "boxes": [[0, 0, 1, float("nan")]]}, {"boxes": []}):
        with pytest.raises(ValueError):
            f.label(bad)
    assert f.counts["invalid"] == 3


@pytest.mark.mqtt
def test_mqtt_feedback_is_taken_only_when_signed_by_an_operator_key_for_this_device(broker):
    operator, release = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    trust = TrustStore.from_keys([operator.public_key()], [OPERATOR]) | TrustStore.from_keys(
        [release.public_key()], [RELEASE])
    mon = Monitor(MonitorConfig(period_s=3600, system=False))
    link = MqttLink(MqttSettings(host="127.0.0.1", port=broker.port, device_id="cam-m"))
    services = DeviceServices(DeviceConfig(device_id="cam-m"), mon, link=link)
    assert services.enable_feedback(trust)
    link.start()
    try:
        assert link.wait_connected(10)
        for i in range(10):
            mon(frame_result(i, None, top=i % 2))
        labels = [{"id": i, "label": i % 2} for i in range(10)]
        bodies = [sign_feedback("cam-m", labels[:2], release),  # a release key cannot label
                  sign_feedback("cam-other", labels[:2], operator),  # not for this device
                  sign_feedback("cam-m", labels[:2], operator, issued=time.time() - 3600),  # an earlier run's
                  b'{"labels": [{"id": 1, "label": 1}]}',  # unsigned
                  sign_feedback("cam-m", labels, operator, sequence=5)]
        replay = sign_feedback("cam-m", labels, operator, sequence=5)
        for body in [*bodies, replay]:
            subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "edge/devices/cam-m/feedback", "-q", "1",
                            "-s"], input=body, check=True, timeout=10)
        deadline = time.monotonic() + 15
        while sum(services.feedback.counts.values()) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert services.feedback.counts == {"accepted": 1, "rejected": 5}
        assert mon.field.counts["joined"] == 10 and mon.field.figures()["accuracy"] == 1.0
    finally:
        link.stop()
        mon.close()
