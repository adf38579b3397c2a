"""`edge-runtime agent` monitors its pipeline too, over the same MQTT connection it takes updates on."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from edge_runtime.package import load_private_key
from tests.integration.helpers import CLI, health, reap, terminate, wait_until
from tests.model_factory import classifier_package
from tests.monitoring.schemas import validate_batch
from tests.mqtt_broker import free_port
from tests.sync.subscriber import Subscriber


@pytest.mark.mqtt
def test_agent_sends_metrics_over_its_one_mqtt_link(broker, signing_keys, tmp_path):
    priv, pub = signing_keys
    pkg = classifier_package(tmp_path / "pkg", golden=False, sign_key=load_private_key(priv))
    port = free_port()
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "ag-1", "profile": "x86-laptop", "state_dir": str(tmp_path / "state"),
        "trusted_keys": [str(pub)], "initial_package": str(pkg.root), "fps": 30,
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        "monitoring": {"monitor": {"period_s": 0.3}, "http": {"port": port}},
    }))  # fmt: skip
    sub = Subscriber(broker.port, ["edge/devices/ag-1/metrics"])
    proc = subprocess.Popen([*CLI, "agent", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert sub.wait_for(lambda m: len(m) >= 2, 60), "metric batches arrive from the agent"
        h = wait_until(lambda: health(port), 10, proc)
        _, err = terminate(proc)
    finally:
        reap(proc)
        sub.close()
    assert proc.returncode == 0, err
    batch = json.loads(sub.snapshot()[0][1])
    validate_batch(batch)
    record = batch["records"][0]["data"]
    assert record["device"] == "ag-1" and record["model"] == "tiny" and record["frames"] > 0
    assert h["broker"]["configured"] and h["broker"]["connected"] and h["source"]["spec"] == "synthetic"
    assert h["outbox"]["path"] == str(tmp_path / "state" / "outbox.db")
    # one connection for metrics and updates: the broker saw this device's client connect exactly once
    broker.stop()  # flushes its log
    assert broker.log.read_text().count(" as edge-ag-1 ") == 1, broker.log.read_text()


def _source_faults(messages: list[tuple[str, bytes, bool]]) -> list[dict]:
    docs = [json.loads(payload) for _, payload, _ in messages if payload]
    return [d["source"] for d in docs if (d.get("source") or {}).get("fault")]


@pytest.mark.mqtt
def test_agent_whose_camera_stream_cannot_be_opened_keeps_retrying_and_reports_the_fault(broker, signing_keys,
                                                                                        tmp_path):
    """A device agent never gives up on its camera (the camera may come back), but it says so on its status topic
    instead of pretending to be healthy, and stops cleanly when told to."""
    priv, pub = signing_keys
    pkg = classifier_package(tmp_path / "pkg", golden=False, sign_key=load_private_key(priv))
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "device_id": "ag-2", "profile": "x86-laptop", "state_dir": str(tmp_path / "state"),
        "trusted_keys": [str(pub)], "initial_package": str(pkg.root), "source": f"http://127.0.0.1:{free_port()}/cam.mjpg",
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
    }))  # fmt: skip
    sub = Subscriber(broker.port, ["edge/devices/ag-2/update/status"])
    proc = subprocess.Popen([*CLI, "agent", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert sub.wait_for(lambda m: bool(_source_faults(m)), 90), sub.snapshot()[-3:]
        assert proc.poll() is None, "the agent gave up on a camera that may come back"
        _, err = terminate(proc)
    finally:
        reap(proc)
        sub.close()
    assert proc.returncode == 0, err
    fault = _source_faults(sub.snapshot())[-1]
    assert "cam.mjpg" in fault["fault"] or "open" in fault["fault"], fault
    assert "Traceback" not in err
