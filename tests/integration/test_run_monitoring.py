"""`edge-runtime run` with device services, as a real subprocess: Prometheus /metrics and /health while it runs,
records kept in the SQLite outbox while offline, and delivered in order to a real subscriber once a real
mosquitto comes up."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from edge_runtime.sync.outbox import Outbox, OutboxConfig
from tests.integration.helpers import CLI, get, health, reap, sample_value, terminate, wait_until, write_config
from tests.model_factory import trust_args
from tests.monitoring.schemas import validate_batch
from tests.mqtt_broker import Mosquitto, free_port
from tests.sources.media import MjpegServer, write_numbered_video
from tests.sync.subscriber import Subscriber

FRAMES = 60


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_numbered_video(tmp_path_factory.mktemp("clip") / "clip.avi", count=FRAMES)


def _frames(port: int) -> float | None:
    return sample_value(get(f"http://127.0.0.1:{port}/metrics")[1], "edge_frames_total", model="tiny")


def test_run_without_a_broker_serves_metrics_and_health_and_keeps_every_record(tiny_onnx_package, clip, tmp_path):
    # given a device config with no broker, an HTTP port and short metric periods
    port = free_port()
    cfg = write_config(tmp_path / "device.yaml", device_id="cam-1", monitor={"period_s": 0.25}, http={"port": port})
    # when `run` plays the clip at camera pace
    proc = subprocess.Popen(
        [*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(),
         "--source", str(clip), "--fps-limit", "20",
         "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # then /metrics has the frame counter, growing, and per-stage latency histograms
        first = wait_until(lambda: _frames(port), 60, proc)
        text = get(f"http://127.0.0.1:{port}/metrics")[1]
        for stage in ("inference", "end_to_end", "sinks"):
            assert sample_value(text, "edge_stage_latency_seconds_count", stage=stage) >= 1, stage
            assert sample_value(text, "edge_stage_latency_seconds_bucket", stage=stage, le="+Inf") >= 1, stage
        wait_until(lambda: (_frames(port) or 0) > first, 30, proc)
        # and /health reports source, model, outbox and (no) broker
        h = health(port)
        assert h["status"] == "ok" and h["device"] == "cam-1"
        assert h["source"]["spec"] == str(clip) and h["source"]["kind"] == "frame" and h["source"]["running"]
        assert h["model"] == {"name": "tiny", "version": "1.0.0"}
        assert h["broker"] == {"configured": False}
        assert h["outbox"]["path"] == str(tmp_path / "outbox.db")
        out, err = proc.communicate(timeout=60)
    finally:
        reap(proc)
    # and the run ends normally: every result printed, the outbox holds metric records covering every frame
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "no broker" in err
    assert len(out.splitlines()) == FRAMES
    outbox = Outbox(OutboxConfig(path=tmp_path / "outbox.db"))
    try:
        records = outbox.pending(0, 10_000)
    finally:
        outbox.close()
    docs = [json.loads(r.payload) for r in records]
    assert len(records) >= 2 and {r.kind for r in records} == {"metrics"}
    assert [r.id for r in records] == sorted({r.id for r in records})
    assert sum(d["frames"] for d in docs) == FRAMES and docs[-1]["frames_total"] == FRAMES
    assert {d["device"] for d in docs} == {"cam-1"} and docs[-1]["latency_ms"]["inference"]["count"] >= 1


def _delivered_ids(messages: list[tuple[str, bytes, bool]]) -> list[int]:
    """Record ids in arrival order, each id once (QoS 1 is at least once: repeats are exact id repeats)."""
    seen: dict[int, dict] = {}
    for _topic, payload, _retain in messages:
        batch = json.loads(payload)
        validate_batch(batch)  # the batch and every record in it, against edge_runtime/schemas/
        assert batch["device"] == "cam-2"
        for rec in batch["records"]:
            assert seen.setdefault(rec["id"], rec["data"]) == rec["data"], "a repeated id must be the same record"
    return list(seen)


@pytest.mark.mqtt
def test_records_wait_in_the_outbox_while_the_broker_is_down_and_arrive_in_order_after(tiny_onnx_package, tmp_path):
    # given a broker that knows a persistent subscriber, then goes down
    broker = Mosquitto(tmp_path / "broker").start()
    sub = Subscriber(broker.port, ["edge/devices/cam-2/metrics", "edge/devices/cam-2/events"],
                     client_id="integration-sub")
    broker.stop()
    camera = MjpegServer(fps=20).start()
    port = free_port()
    cfg = write_config(
        tmp_path / "device.yaml", device_id="cam-2", monitor={"period_s": 0.25}, http={"port": port},
        mqtt={"host": "127.0.0.1", "port": broker.port, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0},
        outbox={"path": "state/outbox.db"},
    )  # fmt: skip
    proc = subprocess.Popen([*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(),
                             "--source", camera.url,
                             "--config", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # when the device runs offline, records pile up in the outbox and inference goes on
        h = wait_until(lambda: (h := health(port))["outbox"]["records"] >= 3 and h, 60, proc)
        assert h["status"] == "ok", h["problems"]  # offline is a normal state
        assert h["broker"]["configured"] and not h["broker"]["connected"]
        assert "unreachable" in h["broker"]["last_error"]
        waiting = h["outbox"]["records"]
        # and the broker comes back
        broker.start()
        wait_until(lambda: health(port)["broker"]["connected"], 30, proc)
        assert sub.wait_for(lambda m: len(_delivered_ids(m)) >= waiting, 30), "the records kept offline arrive"
        assert health(port)["frames"] > 0
        _, err = terminate(proc)
    finally:
        reap(proc)
        camera.stop()
    try:
        assert proc.returncode == 0, err
        # then every record the device ever stored (ids 1..last) arrived, in order, and the outbox is empty
        db = sqlite3.connect(tmp_path / "state" / "outbox.db")
        last_id = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()[0]
        left = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        db.close()
        assert left == 0, err
        assert sub.wait_for(lambda m: len(_delivered_ids(m)) >= last_id, 30)
        assert _delivered_ids(sub.snapshot()) == list(range(1, last_id + 1))
        assert "delivered to the broker, 0 waiting" in err
    finally:
        sub.close()
        broker.stop()
