"""Round 3 attacks on sample ingest from one device's MQTT credentials (fleet/server/records.py), on a real
store, driven as ingest drives it: parse, then write the batch in one transaction.

- A sample's file extension comes from the device: a NUL byte in it made the store raise ValueError, losing the
  whole batch (every device's records in it), and a slash made a directory inside the content-addressed store.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from sqlalchemy import select

from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from fleet.server.loadgen import batch_payload, metric_record
from fleet.server.records import parse
from fleet.server.store import Store


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
