"""start_services in process: a model swapped mid-run (OTA) relabels the metrics, and a refused broker login
shows in health as a problem while inference keeps running."""

from __future__ import annotations

import json
import time

import pytest

from edge_runtime.api import load
from edge_runtime.device_config import DeviceConfig
from edge_runtime.monitoring.config import MonitorConfig
from edge_runtime.monitoring.service import start_services
from edge_runtime.pipeline import Pipeline
from edge_runtime.sources import open_source
from edge_runtime.sync.mqtt import MqttSettings
from edge_runtime.sync.outbox import Outbox, OutboxConfig
from tests.model_factory import classifier_package, factory_trust
from tests.mqtt_broker import Mosquitto
from tests.sources.media import write_numbered_video


def test_a_model_swap_mid_run_relabels_records_and_raises_an_event(tmp_path):
    v1 = load(classifier_package(tmp_path / "v1", golden=False).root, trust=factory_trust())
    v2 = load(classifier_package(tmp_path / "v2", version="2.0.0", seed=3, golden=False).root, trust=factory_trust())
    clip = write_numbered_video(tmp_path / "clip.avi", count=24)
    cfg = DeviceConfig(device_id="d1", outbox=OutboxConfig(path=tmp_path / "outbox.db"),
                       monitor=MonitorConfig(period_s=3600, system=False))
    services = start_services(cfg, v1.manifest)
    pipeline = Pipeline(v1, open_source(str(clip)))
    services.attach(pipeline)
    pipeline.add_sink(lambda r: pipeline.swap_model(v2) if r.index == 9 else None)
    pipeline.run()
    services.close()
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    records = [(r.kind, json.loads(r.payload)) for r in outbox.pending(0, 100)]
    outbox.close()
    metrics = [d for k, d in records if k == "metrics"]
    events = [d for k, d in records if k == "event"]
    assert [(d["version"], d["frames"]) for d in metrics] == [("1.0.0", 10), ("2.0.0", 14)]
    assert [(e["type"], e["version"], e["from"]["version"]) for e in events] == [("model_changed", "2.0.0", "1.0.0")]
    assert [d["latency_ms"]["sinks"]["count"] for d in metrics] == [10, 14]  # the stage hook's figure


@pytest.mark.mqtt
def test_a_refused_login_is_a_health_problem_and_inference_goes_on(tmp_path):
    broker = Mosquitto(tmp_path / "broker", passwords={"d2": "right"}).start()
    clip = write_numbered_video(tmp_path / "clip.avi", count=12)
    model = load(classifier_package(tmp_path / "pkg", golden=False).root, trust=factory_trust())
    cfg = DeviceConfig(
        device_id="d2", outbox=OutboxConfig(path=tmp_path / "outbox.db"), monitor=MonitorConfig(period_s=0.05),
        mqtt=MqttSettings(host="127.0.0.1", port=broker.port, device_id="d2", username="d2", password="wrong",
                          reconnect_min_s=0.2, reconnect_max_s=1.0),
    )  # fmt: skip
    try:
        with start_services(cfg, model.manifest) as services:
            deadline = time.monotonic() + 15
            while not services.health()["problems"] and time.monotonic() < deadline:
                time.sleep(0.05)
            h = services.health()
            pipeline = Pipeline(model, open_source(str(clip)))
            services.attach(pipeline)
            stats = pipeline.run()
    finally:
        broker.stop()
    assert h["status"] == "degraded" and not h["broker"]["connected"]
    assert h["problems"][0].startswith("broker: connection refused by broker")
    assert stats.processed == 12 and services.left_in_outbox >= 1  # records wait for a login that works
