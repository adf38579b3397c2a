"""`edge-runtime serve --config` as a real uvicorn subprocess: predictions feed the monitor, /metrics and /health
answer on the service's own port, and metric records land in the outbox."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import cv2
import numpy as np

from edge_runtime.sync.outbox import Outbox, OutboxConfig
from tests.integration.helpers import CLI, get, health, reap, sample_value, terminate, wait_until, write_config
from tests.model_factory import trust_args
from tests.mqtt_broker import free_port


def _post_image(port: int, seed: int) -> dict:
    img = np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    ok, png = cv2.imencode(".png", img)
    req = urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=png.tobytes(),
                                 headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback
        return json.loads(r.read())


def test_serve_feeds_predictions_to_the_monitor_and_exposes_metrics_and_health(tiny_onnx_package, tmp_path):
    port = free_port()
    cfg = write_config(tmp_path / "device.yaml", device_id="svc-1", monitor={"period_s": 3600})
    proc = subprocess.Popen([*CLI, "serve", "--package", str(tiny_onnx_package.root), *trust_args(),
                             "--port", str(port),
                             "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 60, proc)
        answers = [_post_image(port, seed) for seed in range(3)]
        assert all(a["task"] == "classification" for a in answers)
        text = get(f"http://127.0.0.1:{port}/metrics")[1]
        assert sample_value(text, "edge_frames_total", model="tiny", version="1.0.0") == 3
        assert sample_value(text, "edge_stage_latency_seconds_count", stage="inference") == 3
        h = health(port)
        assert h["status"] == "ok" and h["device"] == "svc-1" and h["frames"] == 3
        assert h["source"]["kind"] == "http" and h["source"]["requests"] == 3
        assert h["model"]["name"] == "tiny" and h["broker"] == {"configured": False}
        assert h["outbox"]["records"] == 0  # the period is long: the record is written at shutdown
        _, err = terminate(proc)
    finally:
        reap(proc)
    assert proc.returncode == 0, err
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    try:
        docs = [json.loads(r.payload) for r in outbox.pending(0, 100)]
    finally:
        outbox.close()
    assert [d["frames"] for d in docs] == [3]
    assert docs[0]["pipeline"]["requests"] == 3 and docs[0]["device"] == "svc-1"
