"""Delivery guarantees of `fleet serve` with a real broker, on SQLite and PostgreSQL: a kill -9 mid-ingest
loses nothing and stores nothing twice; two instances in one share group store every record exactly once."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from sqlalchemy import func, select

from fleet.server.db import tables as t
from fleet.server.db.engine import make_engine, migrate
from fleet.server.loadgen import Publisher, metric_record
from tests.fleet_server.conftest import FleetServer, add_user
from tests.integration.helpers import sample_value, wait_until
from tests.mqtt_broker import Mosquitto

pytestmark = pytest.mark.mqtt
DEVICES, BATCHES, PER_BATCH = 40, 25, 10  # 10,000 records in 1,000 messages


def _publish(port: int, pace_s: float, stop: threading.Event | None = None) -> threading.Thread:
    def run() -> None:
        pub = Publisher(port, client_id="load-1")
        now = time.time()
        for b in range(BATCHES):
            for d in range(DEVICES):
                dev = f"sim-{d:03d}"
                pub.send(dev, [metric_record(dev, now + b * PER_BATCH + i) for i in range(PER_BATCH)])
            time.sleep(pace_s)
        pub.close()

    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def _stored(engine) -> tuple[int, int]:
    """(rows, distinct keys) of the metrics table."""
    with engine.connect() as conn:
        rows = conn.execute(select(func.count()).select_from(t.metrics)).scalar_one()
        per = conn.execute(select(t.metrics.c.device, func.count(), func.min(t.metrics.c.record_id),
                                  func.max(t.metrics.c.record_id)).group_by(t.metrics.c.device)).all()
    assert all(n == hi - lo + 1 for _, n, lo, hi in per)  # contiguous ids per device: none missing, none twice
    return rows, len(per)


def test_kill_9_mid_ingest_then_restart_loses_nothing_and_stores_nothing_twice(db_url, tmp_path):
    # given a broker and a server ingesting a steady stream from 50 simulated devices
    broker = Mosquitto(tmp_path / "broker").start()
    engine = make_engine(db_url)
    migrate(engine)
    server = FleetServer(broker.port, db_url, tmp_path / "fleet")
    server.token = add_user(db_url, "ops", "operator")
    try:
        server.start()
        total = DEVICES * BATCHES * PER_BATCH
        pub = _publish(broker.port, pace_s=0.05)
        # when the server is killed with SIGKILL while records are arriving
        wait_until(lambda: _stored(engine)[0] >= total // 5, 120)
        server.kill()
        killed_at = _stored(engine)[0]
        assert killed_at < total, "the kill must come mid-ingest"
        pub.join(120)  # the rest is published while the server is down: the broker keeps it for the session
        # and restarted on the same session
        server.start()
        # then every record is stored exactly once
        wait_until(lambda: _stored(engine)[0] >= total, 180)
        time.sleep(1.0)  # redeliveries still in flight would show up as extra rows
        assert _stored(engine) == (total, DEVICES)
        # and the restarted process stored exactly what the killed one had not committed
        text = server.get("/metrics")[1].decode()
        assert sample_value(text, "fleet_ingest_records_stored_total") == total - killed_at
    finally:
        server.stop()
        broker.stop()
        engine.dispose()


def test_two_instances_in_one_share_group_store_every_record_once(db_url, tmp_path):
    # given two servers on one database, in one share group, with their own sessions
    broker = Mosquitto(tmp_path / "broker").start()
    engine = make_engine(db_url)
    migrate(engine)
    token = add_user(db_url, "ops", "operator")
    servers = [FleetServer(broker.port, db_url, tmp_path / f"fleet-{i}", client_id=f"fleet-{i}") for i in (1, 2)]
    try:
        for s in servers:
            s.token = token
            s.start()
        # when the devices publish
        _publish(broker.port, pace_s=0.0).join(120)
        total = DEVICES * BATCHES * PER_BATCH
        # then the database holds each record once, both instances took a share, and no record went to both
        wait_until(lambda: _stored(engine)[0] >= total, 180)
        time.sleep(1.0)
        assert _stored(engine) == (total, DEVICES)
        shares = [sample_value(s.get("/metrics")[1].decode(), "fleet_ingest_records_stored_total") for s in servers]
        dups = [sample_value(s.get("/metrics")[1].decode(), "fleet_ingest_duplicates_total") for s in servers]
        assert all(n > 0 for n in shares) and sum(shares) == total, shares
        assert dups == [0, 0]
        # and the exposition passes Prometheus' own linter
        lint = subprocess.run(["promtool", "check", "metrics"], input=servers[0].get("/metrics")[1],
                              capture_output=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    finally:
        for s in servers:
            s.stop()
        broker.stop()
        engine.dispose()
