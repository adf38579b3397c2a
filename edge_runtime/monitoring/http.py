"""Local endpoints: Prometheus ``/metrics`` (prometheus-client) and JSON ``/health``, on stdlib http.server.

The Prometheus collector reads the Monitor's cumulative state at scrape time, so the pipeline thread pays
nothing for it. Without prometheus-client installed, ``/metrics`` answers 501 with the install hint.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from edge_runtime.monitoring.monitor import Monitor

log = logging.getLogger(__name__)


def _collector(monitor: Monitor) -> Any:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

    class MonitorCollector:
        def collect(self) -> Iterator[Any]:
            labels = {"model": monitor.model, "version": monitor.version}
            c = CounterMetricFamily("edge_frames", "Frames processed", labels=list(labels))
            c.add_metric(list(labels.values()), monitor.frames)
            yield c
            h = HistogramMetricFamily("edge_stage_latency_seconds", "Per-stage latency", labels=["stage"])
            for stage, hist in monitor.latency.hist.items():
                cum, buckets = 0, []
                for bound, n in zip(hist.bounds, hist.counts, strict=False):
                    cum += n
                    buckets.append((repr(bound / 1000.0), cum))
                buckets.append(("+Inf", hist.count))
                h.add_metric([stage], buckets, sum_value=hist.total / 1000.0)
            yield h
            yield from _gauges(monitor, GaugeMetricFamily)

    return MonitorCollector()


def _gauges(monitor: Monitor, Gauge: Any) -> Iterator[Any]:  # noqa: N803 - a class passed in
    health = monitor.health()
    ob = health.get("outbox") or {}
    for key in ("records", "bytes", "dropped", "append_failures"):
        if ob.get(key) is not None:
            g = Gauge(f"edge_outbox_{key}", f"Outbox {key}")
            g.add_metric([], ob[key])
            yield g
    g = Gauge("edge_broker_connected", "1 when the MQTT link is connected")
    g.add_metric([], 1.0 if (health.get("broker") or {}).get("connected") else 0.0)
    yield g
    if monitor.drift is not None:
        g = Gauge("edge_drift", "1 while a feature is drifting", labels=["feature"])
        for feature, drifted in monitor.drift.state.items():
            g.add_metric([feature], 1.0 if drifted else 0.0)
        yield g
    src = health.get("source") or {}
    for key in ("dropped", "errors", "skipped_still"):
        if key in src:
            g = Gauge(f"edge_pipeline_{key}", f"Pipeline {key} samples")
            g.add_metric([], src[key])
            yield g
    rec = monitor.last_record or {}
    sysd = rec.get("system") or {}
    for key, name in (("cpu_percent", "edge_process_cpu_percent"), ("rss_bytes", "edge_process_rss_bytes")):
        if key in sysd:
            g = Gauge(name, key)
            g.add_metric([], sysd[key])
            yield g
    if sysd.get("temperature_c"):
        g = Gauge("edge_temperature_celsius", "Thermal zone temperature", labels=["zone"])
        for zone, t in sysd["temperature_c"].items():
            g.add_metric([zone], t)
        yield g


def make_registry(monitor: Monitor) -> Any:
    """A prometheus-client registry exposing ``monitor`` (None, with a warning, without prometheus-client)."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        log.warning("prometheus-client is not installed: /metrics disabled (pip install 'edge-runtime[monitor]')")
        return None
    registry = CollectorRegistry()
    registry.register(_collector(monitor))
    return registry


class MonitorHttpServer:
    """``start()`` serves on a daemon thread; ``port`` is the bound port (pass 0 to pick a free one).
    ``health`` replaces ``monitor.health`` as the /health document (device services add source and forwarder)."""

    def __init__(self, monitor: Monitor, host: str = "127.0.0.1", port: int = 0,
                 health: Callable[[], dict[str, Any]] | None = None) -> None:
        self.monitor = monitor
        self.health = health or monitor.health
        self._registry = make_registry(monitor)
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    outer._metrics(self)
                elif path in ("/health", "/healthz"):
                    body = json.dumps(outer.health(), default=str).encode()
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        return Handler

    def _metrics(self, req: Any) -> None:
        if self._registry is None:
            req._send(501, "text/plain", b"prometheus-client is not installed: pip install 'edge-runtime[monitor]'\n")
            return
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        req._send(200, CONTENT_TYPE_LATEST, generate_latest(self._registry))

    def start(self) -> MonitorHttpServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="monitor-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
