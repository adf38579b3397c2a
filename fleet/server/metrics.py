"""Prometheus /metrics: fleet aggregates read from the database at scrape time, and ingest counters."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from fleet.server.db import queries


class FleetCollector:
    def __init__(self, srv: Any) -> None:
        self.srv = srv

    def collect(self) -> Any:
        with self.srv.engine.connect() as conn:
            ov = queries.overview(conn)
            lag = queries.ingest_lag(conn)
        g = GaugeMetricFamily
        yield g("fleet_devices", "Devices known to the server", value=ov["devices"])
        yield g("fleet_devices_online", "Devices whose retained state says online", value=ov["online"])
        yield g("fleet_devices_drifting", "Devices whose latest drift event is not cleared", value=ov["drifting"])
        yield g("fleet_devices_failed_updates", "Devices whose update failed or rolled back",
                value=ov["failed_updates"])
        per = g("fleet_model_version_devices", "Devices per model version", labels=["model", "version"])
        for v in ov["versions"]:
            per.add_metric([v["model"] or "", v["version"] or ""], v["devices"])
        yield per
        yield g("fleet_ingest_lag_seconds", "Arrival time minus device time of the newest stored metric record",
                value=lag if lag is not None else float("nan"))
        dl = CounterMetricFamily("fleet_package_requests", "Device package downloads answered, by outcome "
                                 "(full, partial: a Range request, unauthorized, forbidden, missing)",
                                 labels=["outcome"])
        for outcome, n in self.srv.downloads.snapshot().items():
            dl.add_metric([outcome], n)
        yield dl
        ing = self.srv.ingest
        if ing is not None:
            yield g("fleet_ingest_connected", "1 while the ingest is connected to the broker",
                    value=1.0 if ing.connected.is_set() else 0.0)
            for name, help_ in (("messages", "MQTT messages written"), ("records_stored", "Records stored"),
                                ("duplicates", "Redelivered records already stored"),
                                ("rejected", "Payloads or records refused by validation"),
                                ("db_errors", "Database writes that failed and were retried")):
                yield CounterMetricFamily(f"fleet_ingest_{name}", help_, value=ing.counters[name])
            up = CounterMetricFamily("fleet_sample_upload_messages", "Chunked sample upload messages by outcome "
                                     "(offers, chunks, duplicate_chunks, completed, refused)", labels=["outcome"])
            for outcome, n in ing.uploads.counters.items():
                up.add_metric([outcome], n)
            yield up


def exposition(srv: Any) -> bytes:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(FleetCollector(srv))
    return generate_latest(reg)
