"""The database side, on SQLite and PostgreSQL: migrations, idempotent writes, rollups and retention."""

from __future__ import annotations

import time

from alembic.script import ScriptDirectory
from sqlalchemy import func, select

from fleet.server.db import tables as t
from fleet.server.db.engine import MIGRATIONS, current_revision, make_engine, migrate
from fleet.server.loadgen import batch_payload, metric_record
from fleet.server.records import parse
from fleet.server.rollup import Maintenance
from fleet.server.settings import Retention
from fleet.server.store import Store


def _items(device: str, first: int, n: int, ts: float, version: str = "1.0.0"):
    payload = batch_payload(device, "ep", "metrics", first, [metric_record(device, ts + i, version) for i in range(n)])
    topic = f"edge/devices/{device}/metrics"
    return [(topic, payload, parse(topic, payload))]


def test_migrations_run_once_and_writes_are_idempotent_on_the_record_key(db_url, tmp_path):
    # given a fresh database migrated twice (the second time a no-op)
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)
    assert current_revision(engine) == ScriptDirectory(str(MIGRATIONS)).get_current_head()  # one head, reached
    store = Store(engine, tmp_path / "samples")
    now = time.time()
    # when the same batch arrives three times, and an overlapping one once
    first = store.write(_items("cam-1", 1, 10, now), now)
    again = store.write(_items("cam-1", 1, 10, now) * 2, now)
    overlap = store.write(_items("cam-1", 6, 10, now), now)
    # then every record is stored once and the repeats are counted as duplicates
    assert first.stored["metrics"] == 10 and first.duplicates == 0
    assert again.stored["metrics"] == 0 and again.duplicates == 20
    assert overlap.stored["metrics"] == 5 and overlap.duplicates == 5
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.metrics)).scalar_one() == 15
        dev = conn.execute(select(t.devices)).one()
    assert dev.id == "cam-1" and dev.version == "1.0.0" and dev.last_seen >= now
    engine.dispose()


def test_refused_payloads_are_kept_aside_and_ingest_goes_on(db_url, tmp_path):
    engine = make_engine(db_url)
    migrate(engine)
    store = Store(engine, tmp_path / "samples")
    items = [("edge/devices/cam-1/metrics", b"{oops", parse("edge/devices/cam-1/metrics", b"{oops")),
             *_items("cam-1", 1, 3, time.time())]
    res = store.write(items, time.time())
    assert res.rejected == 1 and res.stored["metrics"] == 3
    with engine.connect() as conn:
        row = conn.execute(select(t.rejected)).one()
    assert row.payload == b"{oops" and row.topic == "edge/devices/cam-1/metrics" and "not JSON" in row.reason
    # and a flood of bad payloads is bounded: maintenance keeps the newest rejected_max_rows
    flood = [("edge/devices/cam-1/metrics", f"bad {i}".encode(), parse("edge/devices/cam-1/metrics", b"x"))
             for i in range(150)]
    store.write(flood, time.time())
    Maintenance(engine, Retention(rejected_max_rows=100)).run_once()
    with engine.connect() as conn:
        kept = [r.payload for r in conn.execute(select(t.rejected).order_by(t.rejected.c.id))]
    assert kept == [f"bad {i}".encode() for i in range(50, 150)]
    engine.dispose()


def test_rollups_summarise_raw_metrics_and_retention_drops_old_rows(db_url, tmp_path):
    # given raw metrics of two devices over three minutes, and one record ten days old
    engine = make_engine(db_url)
    migrate(engine)
    store = Store(engine, tmp_path / "samples")
    now = time.time()
    base = now - now % 3600 - 1800  # half an hour into the previous hour: all three minutes in one hour bucket
    for dev in ("cam-1", "cam-2"):
        store.write(_items(dev, 1, 18, base), now)  # one record every second for 18 s... then more minutes
        store.write(_items(dev, 100, 6, base + 60), now)
        store.write(_items(dev, 200, 6, base + 120, version="1.1.0"), now)
    store.write(_items("cam-3", 1, 1, now - 10 * 86400), now)
    # when maintenance runs
    done = Maintenance(engine, Retention(raw_days=7), recompute_s=4 * 3600).run_once(now)
    # then 1-minute buckets count their records per device and version, the hour bucket sums them
    with engine.connect() as conn:
        m = conn.execute(select(t.rollup_1m).where(t.rollup_1m.c.device == "cam-1")
                         .order_by(t.rollup_1m.c.bucket)).all()
        h = conn.execute(select(t.rollup_1h).where(t.rollup_1h.c.device == "cam-1")).all()
        old = conn.execute(select(func.count()).select_from(t.metrics)
                           .where(t.metrics.c.device == "cam-3")).scalar_one()
    assert [(r.version, r.n) for r in m] == [("1.0.0", 18), ("1.0.0", 6), ("1.1.0", 6)]
    assert all(r.bucket % 60 == 0 and r.frames == 10 * r.n for r in m)
    assert sorted((r.version, r.n) for r in h) == [("1.0.0", 24), ("1.1.0", 6)]
    assert old == 0 and done["metrics"] == 1
    # and running it again changes nothing (upserts of the same buckets)
    Maintenance(engine, Retention(raw_days=7), recompute_s=4 * 3600).run_once(now)
    with engine.connect() as conn:
        assert conn.execute(select(func.sum(t.rollup_1h.c.n))).scalar_one() == 60
    engine.dispose()
