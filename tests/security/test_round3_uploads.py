"""Round 3 attacks on sample ingest from one device's MQTT credentials (fleet/server/records.py), on a real
store, driven as ingest drives it: parse, then write the batch in one transaction.

- A sample's file extension comes from the device: a NUL byte in it made the store raise ValueError, losing the
  whole batch (every device's records in it), and a slash made a directory inside the content-addressed store.
- Partial chunked uploads are bounded in bytes for all devices together; chunks of uploads dropped to make room (or
  finished) stayed counted until a rescan 30 s later, so one device cycling offers made the server answer "full"
  to every device's upload.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from fleet.server.loadgen import batch_payload, metric_record
from fleet.server.records import parse
from fleet.server.store import Store
from fleet.server.uploads import Uploads

CB = 1024
UPLOAD = "edge/devices/cam-1/samples/upload"


def _store(url: str, tmp_path: Path) -> Store:
    engine = make_engine(url)
    migrate(engine)
    return Store(engine, tmp_path / "samples", sample_max_bytes=1 << 20)


def _rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(t.samples))]


@pytest.mark.parametrize("file", ["x.\u0000", "x./z", "x.a\\b", "x.\u00e9"])
def test_a_devices_file_extension_cannot_break_the_batch_or_the_store(tmp_path: Path, file: str) -> None:
    store = _store(f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path)
    topic = "edge/devices/cam-1/samples"
    hostile = json.dumps({"schema": "sample/1", "device": "cam-1", "sample": {"id": "s1", "file": file},
                          "data_b64": base64.b64encode(b"hostile").decode()}).encode()
    metrics = batch_payload("cam-2", "ep1", "metrics", 1, [metric_record("cam-2", 990.0)])
    items = [(t_, p, parse(t_, p, "edge", 1000.0)) for t_, p in ((topic, hostile),
                                                                  ("edge/devices/cam-2/metrics", metrics))]
    store.write(items, 1000.0)  # one transaction with another device's record: must not raise
    (row,) = _rows(store)
    assert row["ext"].isascii() and row["ext"].isalnum()
    kept = [p for p in store.sample_dir.rglob("*") if p.is_file()]
    assert kept == [store.sample_path(row["sha256"], row["ext"])]  # content-addressed, one level, no new folders
    with store.engine.connect() as conn:
        assert conn.execute(select(t.metrics.c.device)).scalars().all() == ["cam-2"]
    store.engine.dispose()


def _offer(sid: str, data: bytes) -> bytes:
    return json.dumps({"schema": "sample-upload/1", "type": "offer", "sample_id": sid,
                       "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "chunk_bytes": CB,
                       "chunks": math.ceil(len(data) / CB), "meta": {"file": f"{sid}.png"}}).encode()


def _chunk(sid: str, data: bytes, i: int) -> bytes:
    return json.dumps({"schema": "sample-upload/1", "type": "chunk", "sample_id": sid,
                       "sha256": hashlib.sha256(data).hexdigest(), "index": i,
                       "data_b64": base64.b64encode(data[i * CB:(i + 1) * CB]).decode()}).encode()


def test_one_device_cycling_partial_uploads_cannot_fill_the_space_for_every_device(tmp_path: Path) -> None:
    store = _store(f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path)
    up = Uploads(store, "edge", max_open=2, max_partial_bytes=8 * CB)
    hostile = "edge/devices/cam-1/samples/upload"
    # one device keeps at most 2 partial uploads of 3 of 4 chunks; each new offer drops its oldest, so its disk
    # use stays at 6 KiB, under the 8 KiB bound, however many it offers
    for n in range(12):
        data = os.urandom(4 * CB)
        for payload in (_offer(f"h{n}", data), *(_chunk(f"h{n}", data, i) for i in range(3))):
            up.handle(hostile, payload, 1000.0)
    on_disk = sum(p.stat().st_size for p in (store.sample_dir / "partial").rglob("c[0-9]*"))
    assert on_disk <= 6 * CB
    # so another device's upload still has room (it was refused as "full" while the dropped chunks were counted)
    data = os.urandom(CB)
    other = "edge/devices/cam-2/samples/upload"
    up.handle(other, _offer("s1", data), 1000.0)
    out = up.handle(other, _chunk("s1", data, 0), 1000.0)
    assert out.complete, out.ack
    store.engine.dispose()


def test_chunks_do_not_rescan_the_uploads_folder_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk listed its sample's folder to answer ``have``: a sample of 8192 chunks took minutes to land
    (quadratic), and one device re-sending one chunk of it a dozen times a second held ingest for every device."""
    store = _store(f"sqlite:///{tmp_path / 'fleet.db'}", tmp_path)
    up = Uploads(store, "edge")
    listings = []
    real_glob = Path.glob

    def counting_glob(self: Path, pattern: str):  # type: ignore[no-untyped-def]
        listings.append(self)
        return real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", counting_glob)
    data = os.urandom(64 * CB)
    up.handle(UPLOAD, _offer("s1", data), 1000.0)
    for i in range(63):
        up.handle(UPLOAD, _chunk("s1", data, i), 1000.0)
    for _ in range(100):  # a flood of one duplicate chunk
        assert up.handle(UPLOAD, _chunk("s1", data, 5), 1000.0).ack["have"] == list(range(63))  # type: ignore[index]
    sample_dir = store.sample_dir / "partial" / "cam-1" / "s1"
    assert sum(d == sample_dir for d in listings) <= 2
    out = up.handle(UPLOAD, _chunk("s1", data, 63), 1000.0)
    store.write([(UPLOAD, b"", out.parsed)], 1000.0)
    assert up.finish(out)["complete"] is True  # type: ignore[index]
    store.engine.dispose()
