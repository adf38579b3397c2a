"""The device half of the loop with real parts: a real mosquitto, the real `edge-runtime fleet serve`, a real
`edge-runtime run --config` on an MJPEG camera, and a collection policy pushed with `edge-runtime fleet policy set`.
Samples are kept by rule (low confidence), per-class quotas and near-duplicate suppression hold, the stored image
is the redacted (downscaled) one, uploads survive a kill -9 of the server mid-sample without re-sending chunks
that had landed, a forged policy is refused and reported, and one set through the server's API is followed."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from sqlalchemy import select

from edge_runtime.monitoring.collect import CollectionPolicy, sign_policy
from edge_runtime.monitoring.collector import hamming
from edge_runtime.package import generate_keypair, load_private_key
from fleet.server.auth import add_user, create_token
from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from tests.fleet_server.conftest import FleetServer, cli
from tests.integration.helpers import CLI, reap, terminate, wait_until, write_config
from tests.model_factory import trust_args
from tests.monitoring.schemas import validate
from tests.mqtt_broker import Mosquitto
from tests.sources.media import MjpegServer
from tests.sync.subscriber import Subscriber

pytestmark = pytest.mark.mqtt
skimage_data = pytest.importorskip("skimage.data")
QUOTA = 2


def _scenes() -> list[np.ndarray]:
    names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
    return [cv2.resize(np.ascontiguousarray(getattr(skimage_data, n)()[:, :, ::-1]), (160, 120)) for n in names]


def _camera() -> MjpegServer:
    """Six scenes in a loop, each shown for 3 frames with a little fresh noise: near-duplicates galore."""
    scenes, rng = _scenes(), np.random.default_rng(0)

    def frame(i: int) -> np.ndarray:
        base = scenes[(i // 3) % len(scenes)]
        return np.clip(base.astype(np.int16) + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)

    return MjpegServer(fps=15, frames=frame).start()


def _acked(messages: list[tuple[str, bytes, bool]]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for topic, payload, _ in messages:
        if topic.endswith("/samples/ack"):
            doc = json.loads(payload)
            out.setdefault(doc["sample_id"], set()).update(doc.get("have", ()))
    return out


def _chunks_sent(messages: list[tuple[str, bytes, bool]]) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for topic, payload, _ in messages:
        if topic.endswith("/samples/upload") and (doc := json.loads(payload))["type"] == "chunk":
            out[(doc["sample_id"], doc["index"])] = out.get((doc["sample_id"], doc["index"]), 0) + 1
    return out


def test_policy_pushed_samples_selected_redacted_and_uploaded_through_a_server_restart(
        tiny_onnx_package, signing_keys, tmp_path: Path) -> None:
    # given a broker, the fleet server (SQLite) with an operator key, and a group policy published with the CLI
    broker = Mosquitto(tmp_path / "broker").start()
    db_url = f"sqlite:///{tmp_path / 'fleet.db'}"
    server = FleetServer(broker.port, db_url, tmp_path / "fleet", extra=("--operator-key", str(signing_keys[0])))
    engine = make_engine(db_url)
    migrate(engine)
    add_user(engine, "olga", "correct-horse", "operator")  # what `fleet user add` and `fleet token create` do
    server.token = create_token(engine, "olga")[0]
    policy = {"upload": True, "low_confidence": 1.0, "random_rate": 0.0, "class_quota": QUOTA,
              "dedup": {"max_distance": 6}, "redact": [{"kind": "downscale", "max_side": 120}],
              "upload_limits": {"bytes_per_s": 65536, "chunk_bytes": 1024}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    broker_arg = ["fleet", "--broker", f"mqtt://127.0.0.1:{broker.port}", "policy", "set"]
    r = cli(*broker_arg, str(tmp_path / "policy.yaml"), "--group", "lobby", "--key", str(signing_keys[0]))
    assert r.returncode == 0 and "group:lobby" in r.stdout, r.stderr
    camera = _camera()
    watch = Subscriber(broker.port, ["edge/devices/cam-1/samples/#"], client_id="test-upload-watch")
    cfg = write_config(
        tmp_path / "device.yaml", device_id="cam-1", groups=["lobby"],
        mqtt={"host": "127.0.0.1", "port": broker.port}, outbox={"path": "outbox.db"},
        monitor={"period_s": 0.5, "samples": {"directory": "samples", "low_confidence": None, "upload": True,
                                              "min_interval_s": 0.0}},
        trust={"operator": [str(signing_keys[1])]},
    )  # fmt: skip
    device = None
    try:
        server.start()
        # when a device in group lobby runs on the camera
        device = subprocess.Popen([*CLI, "run", "--package", str(tiny_onnx_package.root), *trust_args(),
                                   "--source", camera.url, "--config", str(cfg)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        # and the server is killed while the first sample is half uploaded, then started again
        wait_until(lambda: any(len(h) >= 3 for h in _acked(watch.snapshot()).values()), 90, device)
        server.kill()
        before = _acked(watch.snapshot())
        server.start()

        # then every sample the device kept lands in the server's store
        def sidecars() -> list[dict]:
            return [json.loads(p.read_text()) for p in sorted((tmp_path / "samples").glob("*.json"))]

        def all_uploaded() -> list[dict] | None:
            kept = sidecars()
            return kept if len(kept) >= 2 and all(m.get("upload") == "done" for m in kept) else None

        kept = wait_until(all_uploaded, 120, device)
        items = wait_until(lambda: (s := server.get("/api/v1/samples?device=cam-1&limit=100")[1])["total"]
                           == len(kept) and s["items"], 30)
        assert {i["sample_id"] for i in items} == {m["id"] for m in kept}
        # kept by rule, within the class quota, no two of one scene, and the stored image is the redacted one
        classes = [m["class"] for m in kept]
        assert all(m["reason"] == "low_confidence" for m in kept)
        assert max(classes.count(c) for c in set(classes)) <= QUOTA and len(kept) <= QUOTA * 3
        hashes = [int(m["phash"], 16) for m in kept]
        assert all(hamming(a, b) > 6 for i, a in enumerate(hashes) for b in hashes[i + 1:])
        for item in items:
            code, content = server.get(f"/api/v1/samples/cam-1/{item['sample_id']}/content")
            img = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_UNCHANGED)
            assert code == 200 and img.shape == (90, 120, 3)
        with engine.connect() as conn:
            metas = [r[0] for r in conn.execute(select(t.samples.c.meta).where(t.samples.c.device == "cam-1"))]
        assert all(m["model"] == "tiny" and m["version"] == "1.0.0" and m["phash"] and m["class"] for m in metas)
        # and the restarted server counts what it reassembled on /metrics
        metrics = server.get("/metrics")[1]
        metrics = metrics.decode() if isinstance(metrics, bytes) else metrics
        done = [line for line in metrics.splitlines()
                if line.startswith('fleet_sample_upload_messages_total{outcome="completed"}')]
        assert done and float(done[0].split()[-1]) >= 1, metrics[-2000:]
        # and no chunk that had landed before the kill was sent again (the server answered from its disk)
        for _, payload, _ in watch.snapshot():  # every upload message and answer as its schema promises
            validate(json.loads(payload), "sample-upload.json")
        sent = _chunks_sent(watch.snapshot())
        landed = [(sid, i) for sid, have in before.items() for i in have]
        assert landed and all(sent[k] == 1 for k in landed), {k: sent[k] for k in landed}

        # when someone without an operator key pushes a policy, the device refuses it and says so
        intruder = load_private_key(generate_keypair(tmp_path / "intruder")[0])
        _, forged = sign_policy("group:lobby", CollectionPolicy(upload=True, dedup=None, class_quota=1000), intruder)
        watch.client.publish("edge/groups/lobby/policy", forged, qos=1, retain=True).wait_for_publish(10)
        ev = wait_until(lambda: server.get("/api/v1/events?device=cam-1&type=policy_rejected")[1]["items"], 30,
                        device)
        assert ev[0]["data"]["code"] == "untrusted_key", ev
        kept_file = tmp_path / "collect" / "policy-group-lobby.json"
        assert json.loads(json.loads(kept_file.read_text())["document"])["policy"]["class_quota"] == QUOTA
        # when an operator sets the group's policy through the server's API, it is signed there and followed
        code, body = server.request("PUT", "/api/v1/policies/groups/lobby", {**policy, "upload": False})
        assert code == 202 and body["scope"] == "group:lobby", body
        wait_until(lambda: json.loads(json.loads(kept_file.read_text())["document"])["sequence"]
                   == body["sequence"], 30, device)
        audit = server.get("/api/v1/audit")[1]["items"]
        assert (audit[0]["user"], audit[0]["action"], audit[0]["outcome"]) == ("olga", "set_policy", "done")
        _, err = terminate(device)
        assert device.returncode == 0, err
    finally:
        engine.dispose()
        if device is not None:
            reap(device)
        server.stop()
        watch.close()
        camera.stop()
        broker.stop()
