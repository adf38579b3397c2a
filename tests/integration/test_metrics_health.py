"""A real `edge-runtime run` on a real MJPEG camera over HTTP: its /metrics is conventional Prometheus text (parsed
by prometheus-client's parser and linted by `promtool check metrics`), and its /health goes unhealthy (503, the
stall named with its figure) while the camera is gone and back to 200 when the camera returns."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.helpers import CLI, get, reap, terminate, wait_until, write_config
from tests.model_factory import trust_args
from tests.mqtt_broker import free_port
from tests.sources.media import MjpegServer

# Families a scrape must carry from the first one on, with their Prometheus types.
EXPECTED = {
    "edge_frames": "counter", "edge_stage_latency_seconds": "histogram", "edge_model_info": "gauge",
    "edge_source_frames_captured": "counter", "edge_source_frames_dropped": "counter",
    "edge_source_reconnects": "counter", "edge_source_bad_lines": "counter", "edge_inference_errors": "counter",
    "edge_last_frame_age_seconds": "gauge", "edge_source_stall_seconds": "gauge", "edge_events": "counter",
    "edge_health_status": "gauge", "edge_outbox_records": "gauge", "edge_outbox_dropped_records": "counter",
    "process_cpu_seconds": "counter", "process_resident_memory_bytes": "gauge",
}


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(fams: dict, name: str, sample: str, **labels: str) -> float | None:
    for s in fams[name].samples:
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def _status(port: int) -> tuple[int, dict]:
    code, body = get(f"http://127.0.0.1:{port}/health")
    return code, json.loads(body)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) is not installed")
def test_run_metrics_are_conventional_and_health_follows_the_camera(tiny_onnx_package, tmp_path):
    # given an IP camera and a device config with short health limits
    cam = MjpegServer(fps=20).start()
    port = free_port()
    cfg = write_config(tmp_path / "device.yaml", device_id="cam-h", http={"port": port},
                       monitor={"period_s": 0.5, "health": {"source_stall_degraded_s": 1.0,
                                                            "source_stall_unhealthy_s": 2.0}})
    proc = subprocess.Popen([*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(), "--source", cam.url,
                             "--config", str(cfg), "--out", str(tmp_path / "out.jsonl")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # when it is scraped the first time
        text = wait_until(lambda: get(f"http://127.0.0.1:{port}/metrics")[1], 60, proc)
        fams = _families(text)
        # then every family is there with its conventional type and a HELP text that explains
        for name, kind in EXPECTED.items():
            assert name in fams and fams[name].type == kind, name
        for f in fams.values():
            assert len(f.documentation) > 15 and f.documentation != f.name, f.name
            if f.type == "counter":
                assert all(s.name.endswith(("_total", "_created")) for s in f.samples), f.name
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                              timeout=30)
        assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr
        # and latency has a dozen buckets per stage around the profile's budget, labelled with the model
        inference = [s for s in fams["edge_stage_latency_seconds"].samples
                     if s.name.endswith("_bucket") and s.labels["stage"] == "inference"]
        assert 8 <= len(inference) <= 14 and {s.labels["model"] for s in inference} == {"tiny"}
        assert {s.labels["version"] for s in inference} == {"1.0.0"}
        assert _value(fams, "edge_source_frames_captured", "edge_source_frames_captured_total",
                      source=cam.url) is not None

        # and with frames flowing /health is 200 ok
        wait_until(lambda: _status(port)[0] == 200 and _status(port)[1]["frames"] > 0, 60, proc)
        # when the camera drops off the network, /health goes 503 and names the stall with its figure
        cam.stop()
        code, doc = wait_until(lambda: (r := _status(port))[0] == 503 and r, 60, proc)
        assert doc["status"] == "unhealthy"
        stall = next(r for r in doc["reasons"] if r["check"] == "source_stalled")
        assert stall["severity"] == "unhealthy" and stall["value"] >= stall["limit"] == 2.0 and stall["unit"] == "s"
        # and when it returns, health is 200 again and the reconnect is counted
        cam.start()
        wait_until(lambda: _status(port)[0] == 200, 90, proc)
        fams = _families(get(f"http://127.0.0.1:{port}/metrics")[1])
        assert _value(fams, "edge_source_reconnects", "edge_source_reconnects_total", source=cam.url) >= 1
        assert _value(fams, "edge_health_status", "edge_health_status", status="ok") == 1.0
        _out, err = terminate(proc)
    finally:
        reap(proc)
        cam.stop()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
