"""A real device (`edge-runtime run --config` on a camera stream, reporting to a real mosquitto) and the real
`edge-runtime fleet serve`: every record the device sent is stored once, the API shows the device, and an
operator's signed sample request makes the device upload samples into the server's store. SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import pytest
from sqlalchemy import select

from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine
from tests.fleet_server.conftest import FleetServer, add_user
from tests.integration.helpers import CLI, reap, terminate, wait_until, write_config
from tests.model_factory import trust_args
from tests.mqtt_broker import Mosquitto
from tests.sources.media import MjpegServer
from tests.sync.subscriber import Subscriber

pytestmark = pytest.mark.mqtt


def test_a_running_device_is_stored_shown_and_uploads_samples_on_request(tiny_onnx_package, signing_keys, db_url,
                                                                          tmp_path):
    # given a broker, the fleet server with an operator key, an operator and a viewer
    broker = Mosquitto(tmp_path / "broker").start()
    server = FleetServer(broker.port, db_url, tmp_path / "fleet", extra=("--operator-key", str(signing_keys[0])))
    op_token, viewer_token = add_user(db_url, "olga", "operator"), add_user(db_url, "vic", "viewer")
    server.token = op_token
    camera = MjpegServer(fps=20).start()
    watch = Subscriber(broker.port, ["edge/devices/cam-1/commands"], client_id="test-watch")
    cfg = write_config(
        tmp_path / "device.yaml", device_id="cam-1", mqtt={"host": "127.0.0.1", "port": broker.port},
        monitor={"period_s": 0.25, "samples": {"directory": "samples", "low_confidence": 1.0,
                                               "min_interval_s": 0.0}},
        outbox={"path": "outbox.db"}, trust={"operator": [str(signing_keys[1])]},
    )  # fmt: skip
    device = None
    try:
        server.start()
        # when a device runs on the camera with monitoring to the broker
        device = subprocess.Popen([*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(),
                                   "--source", camera.url, "--config", str(cfg)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # then the API lists it online with its model and version, and has its metric series
        dev = wait_until(lambda: (d := server.get("/api/v1/devices/cam-1"))[0] == 200 and d[1]["online"]
                         and d[1]["version"] == "1.0.0" and d[1], 90, device)
        assert dev["model"] == "tiny"
        wait_until(lambda: len(server.get("/api/v1/series?device=cam-1&step=raw")[1]["points"]) >= 3, 60, device)
        # and a viewer may not ask for samples, an operator may: the command is signed
        code, body = server.request("POST", "/api/v1/devices/cam-1/commands/upload-samples", {"max": 3},
                                    token=viewer_token)
        assert code == 403, body
        code, body = server.request("POST", "/api/v1/devices/cam-1/commands/upload-samples", {"max": 3})
        assert code == 202, body
        assert watch.wait_for(lambda m: len(m) >= 1, 20)
        envelope = json.loads(watch.snapshot()[0][1])
        cmd = json.loads(envelope["document"])
        assert envelope["schema"] == "command-envelope/1" and envelope["signature"]["alg"] == "ed25519"
        assert cmd["command"] == "upload_samples" and cmd["request_id"] == body["request_id"] and cmd["max"] == 3
        # and the device's samples arrive in the content-addressed store, readable through the API
        got = wait_until(lambda: (s := server.get("/api/v1/samples?device=cam-1")[1])["total"] >= 1 and s, 60, device)
        item = got["items"][0]
        code, content = server.get(f"/api/v1/samples/cam-1/{item['sample_id']}/content")
        assert code == 200 and content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) == item["bytes"]
        # and the audit log names who did what
        audit = server.get("/api/v1/audit")[1]["items"]
        assert [(a["user"], a["action"], a["outcome"]) for a in audit] == [
            ("olga", "request_samples", "done"), ("vic", "request_samples", "refused")]
        _, err = terminate(device)
        assert device.returncode == 0, err
        # when the device has stopped, then it shows offline (its clean disconnect) ...
        wait_until(lambda: not server.get("/api/v1/devices/cam-1")[1]["online"], 30)
        # ... and every record its outbox ever numbered is stored exactly once
        db = sqlite3.connect(tmp_path / "outbox.db")
        last_id = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'records'").fetchone()[0]
        left = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        db.close()
        assert left == 0 and last_id >= 5
        engine = make_engine(db_url)

        def stored() -> list[int]:
            with engine.connect() as conn:
                ids = [r[0] for r in conn.execute(select(t.metrics.c.record_id).where(t.metrics.c.device == "cam-1"))]
                ids += [r[0] for r in conn.execute(select(t.events.c.record_id).where(t.events.c.device == "cam-1"))]
            return sorted(ids)

        wait_until(lambda: len(stored()) >= last_id, 30)
        assert stored() == list(range(1, last_id + 1))
        engine.dispose()
    finally:
        if device is not None:
            reap(device)
        server.stop()
        watch.close()
        camera.stop()
        broker.stop()
