"""Fleet server load figures (issue 14), measured on this machine in the run that prints them.

    .venv/bin/python benchmarks/fleet_load.py [--db sqlite,postgresql] [--seconds 20] [--rate 1000]
        [--devices 10000] [--days 30]

Everything is real: a mosquitto broker, `edge-runtime fleet serve` as its own process (one instance), SQLite (WAL)
or PostgreSQL (Debian's, started in a temp dir with fsync off — say so when quoting), and publishers speaking the
devices' batch/1 + metrics/1 payloads for thousands of simulated device ids over a few MQTT connections.

1. Records/s stored, two ways. Drain: ``--drain-records`` queued on the broker for the server's persistent
   session while it is down, then stored after it starts (the server alone on the CPU). Live: publishers paced at
   ``--live-rate`` records/s (50-record batches) for ``--seconds``, rows committed per second from 3 s in (the
   publishers share the CPU with the server). Goal >= 5,000/s.
2. Ingest lag at ``--rate`` records/s (10-record batches, device time = send time): received (the server's clock
   when it writes the batch, in the same transaction as the commit) minus device time, p50 and p99. Goal p99 <= 2 s.
3. Dashboard overview with ``--devices`` devices and ``--days`` days of 1-hour rollups per device: median and p95
   of GET / (the HTML overview) and GET /api/v1/overview over 20 requests each, plus one fleet-wide 30-day series
   for a version (read from the 1-hour rollups). Goal overview <= 300 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
from sqlalchemy import func, insert, select  # noqa: E402

from edge_runtime.benchmark.machine import machine_summary  # noqa: E402
from fleet.server.db import tables as t  # noqa: E402
from fleet.server.db.engine import make_engine, migrate  # noqa: E402
from fleet.server.loadgen import metric_record  # noqa: E402
from tests.fleet_server.conftest import FleetServer, add_user  # noqa: E402
from tests.fleet_server.postgres import Postgres  # noqa: E402
from tests.mqtt_broker import Mosquitto  # noqa: E402


class FastBatches:
    """batch/1 payloads built from a template (generation must not be the bottleneck being measured)."""

    def __init__(self, devices: int, prefix: str = "sim") -> None:
        self.devices = [f"{prefix}-{i:05d}" for i in range(devices)]
        self.next_id = dict.fromkeys(self.devices, 1)
        data = json.dumps(metric_record("DEV", 0.0), separators=(",", ":"))
        self.head, self.tail = data.split('"ts":0.0')  # the record's own ts goes here
        self.i = 0

    def next(self, n: int, ts: float) -> tuple[str, bytes]:
        dev = self.devices[self.i % len(self.devices)]
        self.i += 1
        first = self.next_id[dev]
        self.next_id[dev] = first + n
        rec = (self.head + f'"ts":{ts:.3f}' + self.tail).replace("DEV", dev)
        body = ",".join(f'{{"id":{first + k},"ts":{ts:.3f},"data":{rec}}}' for k in range(n))
        payload = (f'{{"schema":"batch/1","device":"{dev}","outbox":"bench","kind":"metrics","first_id":{first},'
                   f'"last_id":{first + n - 1},"count":{n},"records":[{body}]}}')
        return f"edge/devices/{dev}/metrics", payload.encode()


def _client(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _rows(engine: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.metrics)).scalar_one())


def drain(port: int, engine: Any, server: FleetServer, records: int) -> dict[str, float]:
    """Records queued on the broker for the server's session while it was down, then stored after its restart:
    the server's own ceiling on this machine, with no publisher competing for the CPU."""
    server.stop()
    gen = FastBatches(2000, "drain")
    c = _client(port, "drain-pub")
    for _ in range(records // 50):
        topic, payload = gen.next(50, time.time())
        info = c.publish(topic, payload, qos=1)
        while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            time.sleep(0.005)
            info = c.publish(topic, payload, qos=1)
    info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()
    base = _rows(engine)
    server.start()
    n0, t0 = _rows(engine), time.monotonic()
    deadline = t0 + 600
    while (n := _rows(engine)) < base + records and time.monotonic() < deadline:
        time.sleep(0.2)
    dt = time.monotonic() - t0
    return {"records_per_s": (n - n0) / dt, "records": n - base, "seconds": dt}


def throughput(port: int, engine: Any, seconds: float, rate: int) -> dict[str, float]:
    """Publishers paced at ``rate`` records/s (50-record batches, 2,000 devices) while the server ingests."""
    gen = FastBatches(2000, "live")
    c = _client(port, "live-pub")
    base = _rows(engine)
    per_tick, tick = max(1, rate // 500), 0.1  # messages of 50 records every 100 ms
    start = time.monotonic()
    marks: list[tuple[float, int]] = []
    ticks = int((seconds + 3) / tick)
    for k in range(ticks):
        for _ in range(per_tick):
            topic, payload = gen.next(50, time.time())
            info = c.publish(topic, payload, qos=1)
            while info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                time.sleep(0.002)
                info = c.publish(topic, payload, qos=1)
        if k in (int(3 / tick), ticks - 1):
            marks.append((time.monotonic(), _rows(engine)))
        delay = start + (k + 1) * tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sent = ticks * per_tick * 50
    sent_rate = sent / (time.monotonic() - start)
    info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()
    (t0, n0), (t1, n1) = marks
    deadline = time.monotonic() + 900
    while _rows(engine) < base + sent and time.monotonic() < deadline:  # the backlog, before the lag phase
        time.sleep(0.5)
    return {"records_per_s": (n1 - n0) / (t1 - t0), "sent_per_s": sent_rate, "window_s": t1 - t0,
            "stored_in_window": n1 - n0, "stored_total": _rows(engine) - base, "sent": sent}


def lag(port: int, engine: Any, rate: int, seconds: float) -> dict[str, float]:
    gen = FastBatches(1000, "lag")
    c = _client(port, "lag-pub")
    since = time.time()
    tick, per_tick = 0.1, max(1, rate // 100)  # messages of 10 records every 100 ms
    start = time.monotonic()
    ticks = int(seconds / tick)
    for k in range(ticks):
        now = time.time()
        for _ in range(per_tick):
            topic, payload = gen.next(10, now)
            c.publish(topic, payload, qos=1)
        delay = start + (k + 1) * tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    sent = ticks * per_tick * 10
    deadline = time.monotonic() + 120
    m = t.metrics.c
    q = select(m.received - m.ts).where(m.device.like("lag-%"), m.ts >= since - 1)
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            lags = sorted(r[0] for r in conn.execute(q))
        if len(lags) >= sent:
            break
        time.sleep(0.5)
    c.disconnect()
    c.loop_stop()
    got = len(lags)
    return {"sent": sent, "stored": got, "rate_sent": sent / seconds,
            "p50_s": lags[got // 2] if got else float("nan"), "p99_s": lags[min(got - 1, int(got * 0.99))] if got
            else float("nan"), "max_s": lags[-1] if got else float("nan")}


def seed_overview(engine: Any, devices: int, days: int) -> float:
    """``devices`` device rows (a few offline, drifting, failed) and ``days`` of 1-hour rollups for each."""
    t0 = time.monotonic()
    now = time.time()
    hour0 = now - now % 3600 - days * 86400
    with engine.begin() as conn:
        conn.execute(insert(t.devices), [
            {"id": f"fleet-{i:05d}", "first_seen": hour0, "last_seen": now - (i % 7) * 60, "online": i % 50 != 0,
             "model": "detector", "version": "1.1.0" if i % 3 else "1.0.0", "serving": "detector-1.1.0",
             "update_state": "failed" if i % 997 == 0 else "committed", "drifting": i % 101 == 0}
            for i in range(devices)])
    cols = [c.name for c in t.rollup_1h.columns]

    def rows_of_hour(h: int) -> list[tuple[Any, ...]]:
        bucket = hour0 + h * 3600
        return [(f"fleet-{i:05d}", bucket, "1.1.0" if i % 3 else "1.0.0", 360, 3600, 1.0, 5.0 + (i % 10) / 10, 9.0,
                 0, 0, 20.0, 50.0, 0.9, 0.05) for i in range(devices)]

    raw = engine.raw_connection()  # the drivers' bulk paths: sqlite3 executemany, PostgreSQL COPY
    try:
        cur = raw.cursor()
        for h in range(days * 24):
            if engine.dialect.name == "postgresql":
                with cur.copy(f"COPY rollup_1h ({', '.join(cols)}) FROM STDIN") as cp:
                    for row in rows_of_hour(h):
                        cp.write_row(row)
            else:
                cur.executemany(f"INSERT INTO rollup_1h ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                rows_of_hour(h))
        raw.commit()
        if engine.dialect.name == "postgresql":
            cur.execute("ANALYZE")
            raw.commit()
    finally:
        raw.close()
    return time.monotonic() - t0


def _timed_get(url: str, token: str, n: int) -> dict[str, float]:
    times = []
    for _ in range(n):
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
            r.read()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"p50_ms": statistics.median(times), "p95_ms": times[min(n - 1, int(n * 0.95))], "n": n}


def run_db(kind: str, url: str, work: Path, a: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"db": kind}
    broker = Mosquitto(work / "broker").start()
    engine = make_engine(url)
    migrate(engine)
    token = add_user(url, "bench", "operator")
    server = FleetServer(broker.port, url, work / "fleet")
    server.token = token
    try:
        server.start()
        out["drain"] = drain(broker.port, engine, server, a.drain_records)
        out["throughput"] = throughput(broker.port, engine, a.seconds, a.live_rate)
        out["lag"] = lag(broker.port, engine, a.rate, a.lag_seconds)
        server.stop()
        out["seed_s"] = seed_overview(engine, a.devices, a.days)
        server.start()
        since = time.time() - a.days * 86400
        out["overview_html"] = _timed_get(server.url + "/", token, 20)
        out["overview_api"] = _timed_get(server.url + "/api/v1/overview", token, 20)
        out["series_30d"] = _timed_get(f"{server.url}/api/v1/series?version=1.1.0&since={since}", token, 3)
    finally:
        server.stop()
        broker.stop()
        engine.dispose()
    return out


def _verdict(ok: bool) -> str:
    return "meets" if ok else "MISS"


def report(r: dict[str, Any], a: argparse.Namespace) -> str:
    tp, lg, dr = r["throughput"], r["lag"], r["drain"]
    lines = [f"## {r['db']}",
             f"- backlog drain (server alone): {dr['records_per_s']:,.0f} records/s stored ({dr['records']:,} in "
             f"{dr['seconds']:.1f} s) — {_verdict(dr['records_per_s'] >= 5000)} goal >= 5,000/s",
             f"- live, publishers on the same machine sending {tp['sent_per_s']:,.0f} records/s: "
             f"{tp['records_per_s']:,.0f} records/s stored ({tp['stored_in_window']:,} in {tp['window_s']:.1f} s) — "
             f"{_verdict(tp['records_per_s'] >= 5000)} goal >= 5,000/s",
             f"- lag at {lg['rate_sent']:,.0f} records/s sent ({lg['stored']:,}/{lg['sent']:,} stored): p50 "
             f"{lg['p50_s']:.3f} s, p99 {lg['p99_s']:.3f} s, max {lg['max_s']:.3f} s — "
             f"{_verdict(lg['p99_s'] <= 2.0 and lg['stored'] == lg['sent'])} goal p99 <= 2 s",
             f"- overview with {a.devices:,} devices and {a.days} days of 1-hour rollups (seeded in "
             f"{r['seed_s']:.0f} s): GET / p50 {r['overview_html']['p50_ms']:.0f} ms, p95 "
             f"{r['overview_html']['p95_ms']:.0f} ms; GET /api/v1/overview p50 {r['overview_api']['p50_ms']:.0f} ms "
             f"— {_verdict(r['overview_html']['p95_ms'] <= 300)} goal <= 300 ms",
             f"- fleet-wide {a.days}-day series of one version (1-hour rollups, {a.devices * a.days * 24:,} rows): "
             f"p50 {r['series_30d']['p50_ms']:.0f} ms (no goal set)"]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--seconds", type=float, default=20, help="live phase length")
    p.add_argument("--live-rate", type=int, default=6000, help="records/s the live publishers send")
    p.add_argument("--drain-records", type=int, default=50_000, help="backlog size of the drain phase")
    p.add_argument("--rate", type=int, default=1000)
    p.add_argument("--lag-seconds", type=float, default=20)
    p.add_argument("--devices", type=int, default=10_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--json", help="also write the raw figures here")
    a = p.parse_args()
    print(machine_summary() if callable(machine_summary) else "", flush=True)
    results = []
    for kind in a.db.split(","):
        with tempfile.TemporaryDirectory(prefix=f"fleet-load-{kind}-") as tmp:
            work = Path(tmp)
            if kind == "sqlite":
                results.append(run_db(kind, f"sqlite:///{work / 'fleet.db'}", work, a))
            else:
                pg = Postgres().start()
                try:
                    results.append(run_db(kind, pg.create_database(), work, a))
                finally:
                    pg.stop()
        print(report(results[-1], a), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
