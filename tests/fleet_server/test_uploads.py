"""Server side of chunked sample uploads (fleet/server/uploads.py) on a real store (SQLite, and PostgreSQL for
reassembly): resume after a restart from the chunks on disk, idempotent duplicates, hostile input refused."""

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
from fleet.server.store import Store
from fleet.server.uploads import Uploads

TOPIC = "edge/devices/cam-1/samples/upload"
CB = 1024


@pytest.fixture
def store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    return Store(engine, tmp_path / "samples", sample_max_bytes=1 << 20)


def offer(sid: str, data: bytes, **over: object) -> bytes:
    doc = {"schema": "sample-upload/1", "type": "offer", "sample_id": sid, "sha256": hashlib.sha256(data).hexdigest(),
           "size": len(data), "chunk_bytes": CB, "chunks": math.ceil(len(data) / CB),
           "meta": {"id": sid, "file": f"{sid}.png", "reason": "low_confidence", "confidence": 0.3, "class": "b",
                    "phash": "00ff00ff00ff00ff", "model": "tiny", "version": "1.0.0"}}
    return json.dumps({**doc, **over}).encode()


def chunk(sid: str, data: bytes, i: int, **over: object) -> bytes:
    doc = {"schema": "sample-upload/1", "type": "chunk", "sample_id": sid, "sha256": hashlib.sha256(data).hexdigest(),
           "index": i, "data_b64": base64.b64encode(data[i * CB:(i + 1) * CB]).decode()}
    return json.dumps({**doc, **over}).encode()


def send(up: Uploads, store: Store, payload: bytes, topic: str = TOPIC) -> dict | None:
    """One message through the assembler and the store, as ingest does it: write the batch, then answer."""
    out = up.handle(topic, payload, 1000.0)
    store.write([(topic, payload, out.parsed)], 1000.0)
    return up.finish(out)


def rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(t.samples))]


def rejected(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return [r[0] for r in conn.execute(select(t.rejected.c.reason))]


def test_chunks_reassemble_resume_after_a_restart_and_land_once(db_url: str, tmp_path: Path) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    store = Store(engine, tmp_path / "samples", sample_max_bytes=1 << 20)
    data = os.urandom(3 * CB + 100)
    up = Uploads(store, "edge")
    assert send(up, store, offer("s1", data))["have"] == []  # type: ignore[index]
    assert send(up, store, chunk("s1", data, 0))["have"] == [0]  # type: ignore[index]
    assert send(up, store, chunk("s1", data, 2))["have"] == [0, 2]  # type: ignore[index]
    # a server restart: a new instance answers the offer with what is on disk
    up = Uploads(store, "edge")
    assert send(up, store, offer("s1", data))["have"] == [0, 2]  # type: ignore[index]
    assert send(up, store, chunk("s1", data, 2))["have"] == [0, 2]  # type: ignore[index] - a redelivery
    assert send(up, store, chunk("s1", data, 1))["have"] == [0, 1, 2]  # type: ignore[index]
    done = send(up, store, chunk("s1", data, 3))
    assert done is not None and done["sample_id"] == "s1" and done["complete"] is True and "have" not in done
    (row,) = rows(store)
    assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["bytes"] == len(data) and row["ext"] == "png"
    assert row["reason"] == "low_confidence" and row["confidence"] == 0.3
    assert row["meta"]["class"] == "b" and row["meta"]["phash"] == "00ff00ff00ff00ff" and row["meta"]["version"]
    assert store.sample_path(row["sha256"], "png").read_bytes() == data
    assert not (store.sample_dir / "partial" / "cam-1" / "s1").exists()
    # offered again (the device did not get the answer): complete at once; a late chunk too; still one row
    assert send(up, store, offer("s1", data))["complete"] is True  # type: ignore[index]
    assert send(up, store, chunk("s1", data, 0))["complete"] is True  # type: ignore[index]
    assert len(rows(store)) == 1 and up.counters["duplicate_chunks"] == 2
    engine.dispose()


def test_hostile_uploads_are_refused_and_counted(store: Store) -> None:
    up = Uploads(store, "edge", max_open=2)
    data = os.urandom(2 * CB)
    refusals = [
        (TOPIC, b"{" * 5000),  # deep JSON
        (TOPIC, b"x" * (300 * 1024)),  # over the message bound
        (TOPIC, offer("../../etc", data)),  # path tricks in the id
        ("edge/devices/../samples/upload", offer("s2", data)),
        (TOPIC, offer("s2", data, size=9 << 20, chunks=9 * 1024)),  # over the sample size
        (TOPIC, offer("s2", data, chunks=7)),  # inconsistent
        (TOPIC, offer("s2", data, sha256="../" * 21 + "a")),
        (TOPIC, offer("s2", data, meta={"x": "y" * 20000})),
    ]
    for topic, payload in refusals:
        out = up.handle(topic, payload, 1.0)
        assert out.parsed.rejected, payload[:80]
    assert up.counters["refused"] == len(refusals)
    # a chunk before any offer: the device is told to offer again (not its fault, not a rejected row)
    assert send(up, store, chunk("s3", data, 0))["retry"] is True  # type: ignore[index]
    send(up, store, offer("s3", data))
    for bad in (chunk("s3", data, 5), chunk("s3", data, 0, data_b64="!!!"),
                chunk("s3", data, 0, data_b64=base64.b64encode(b"short").decode())):
        assert "error" in send(up, store, bad)  # type: ignore[operator]
    # content that does not match its sha256 is refused whole, and nothing is stored
    wrong = json.loads(offer("s4", data))
    wrong["sha256"] = hashlib.sha256(b"other").hexdigest()
    send(up, store, json.dumps(wrong).encode())
    send(up, store, chunk("s4", data, 0, sha256=wrong["sha256"]))
    ack = send(up, store, chunk("s4", data, 1, sha256=wrong["sha256"]))
    assert "sha256" in ack["error"] and ack["retry"] is False  # type: ignore[index]
    assert rows(store) == [] and any("sha256" in r for r in rejected(store))
    # a flood of offers keeps at most max_open partial uploads per device
    for i in range(20):
        send(up, store, offer(f"f{i}", data))
    assert len(list((store.sample_dir / "partial" / "cam-1").iterdir())) <= 2


def test_a_full_sample_store_refuses_the_completed_sample(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fleet.db'}")
    migrate(engine)
    small = Store(engine, tmp_path / "samples", sample_max_bytes=1500)
    up = Uploads(small, "edge")
    data = os.urandom(2 * CB)
    send(up, small, offer("big", data))
    send(up, small, chunk("big", data, 0))
    ack = send(up, small, chunk("big", data, 1))
    assert "full" in ack["error"] and rows(small) == []  # type: ignore[index]
