"""The device's sample uploader against a real mosquitto and the fleet server's ingest (in process, SQLite): a
device restart in the middle of a sample resumes from the server's answer, re-sending no chunk that had landed;
the queue is the sample folder, so it survives the restart."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from edge_runtime.monitoring.collect import UploadRule
from edge_runtime.monitoring.config import SampleConfig
from edge_runtime.monitoring.samples import SampleStore
from edge_runtime.sync.mqtt import MqttLink
from edge_runtime.sync.mqtt_settings import settings_from_url
from edge_runtime.sync.uploader import SampleUploader
from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from fleet.server.ingest import Ingest, IngestConfig
from fleet.server.store import Store
from tests.integration.helpers import wait_until
from tests.monitoring.schemas import validate
from tests.sync.subscriber import Subscriber

pytestmark = pytest.mark.mqtt


def _device(url: str, samples: Path, rule: UploadRule) -> tuple[MqttLink, SampleStore, SampleUploader]:
    link = MqttLink(settings_from_url(url, "cam-1"))
    link.start()
    assert link.wait_connected(20)
    store = SampleStore(SampleConfig(directory=samples, low_confidence=None))
    return link, store, SampleUploader(store, link, "cam-1", samples.parent / "budget.json", lambda: rule).start()


def test_a_device_restart_mid_sample_resends_nothing_that_landed(broker, tmp_path: Path) -> None:
    url = f"mqtt://127.0.0.1:{broker.port}"
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    ingest = Ingest(Store(engine, tmp_path / "server"), settings_from_url(url, "fleet"), IngestConfig())
    ingest.start()
    watch = Subscriber(broker.port, ["edge/devices/cam-1/samples/#"])
    slow = UploadRule(bytes_per_s=6000, chunk_bytes=1024)
    link, store, up = _device(url, tmp_path / "samples", slow)
    try:
        assert ingest.connected.wait(20)
        # given a kept sample of about 12 KB (noise does not compress), marked for upload
        frame = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        store.put(frame, {"reason": "random", "ts": 1.0, "frame_index": 7, "upload": "pending"})
        store.flush()
        (meta,) = store.pending()
        n = -(-meta["bytes"] // 1024)
        # when the device stops after a few chunks landed, and starts again
        wait_until(lambda: up.counters["chunks_sent"] >= 4, 30)
        up.stop()
        link.stop()
        store.close()
        acks = [json.loads(p) for tp, p, _ in watch.snapshot() if tp.endswith("/ack")]
        landed = set().union(*(a.get("have", ()) for a in acks))
        assert 0 < len(landed) < n
        link, store, up = _device(url, tmp_path / "samples", UploadRule(bytes_per_s=1 << 20, chunk_bytes=1024))
        # then the sample is stored whole on the server, and no landed chunk was sent twice
        wait_until(lambda: not store.pending(), 30)
        (done,) = store.list()
        assert done["upload"] == "done"
        with engine.connect() as conn:
            row = conn.execute(select(t.samples)).one()._mapping
        data = (tmp_path / "samples" / meta["file"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data)
        for _, payload, _ in watch.snapshot():  # every upload message and answer as its schema promises
            validate(json.loads(payload), "sample-upload.json")
        sent: dict[int, int] = {}
        for tp, p, _ in watch.snapshot():
            doc = json.loads(p)
            if tp.endswith("/upload") and doc["type"] == "chunk":
                sent[doc["index"]] = sent.get(doc["index"], 0) + 1
        assert set(sent) == set(range(n)) and all(sent[i] == 1 for i in landed), sent
        assert up.counters["chunks_sent"] <= n - len(landed) and up.counters["chunks_resent"] == 0
    finally:
        up.stop()
        link.stop()
        store.close()
        ingest.stop()
        watch.close()
        engine.dispose()
