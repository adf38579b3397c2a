"""The local endpoints ``/metrics`` (Prometheus text), ``/health`` (JSON) and ``POST /feedback`` (labels for
predictions), rendered in one place.

:class:`Endpoints` renders both documents (status code, content type, body); the stdlib server below (`run`,
`agent`) and `serve`'s FastAPI routes are thin adapters around it, so the two stacks answer the same bytes.
/health answers 503 while the device is unhealthy (see monitoring.health). Without prometheus-client
installed, ``/metrics`` answers 501 with the install hint.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from edge_runtime.monitoring.exposition import make_registry

if TYPE_CHECKING:
    from edge_runtime.monitoring.service import DeviceServices

log = logging.getLogger(__name__)
_NO_CLIENT = b"prometheus-client is not installed: pip install 'edge-runtime[monitor]'\n"
MAX_FEEDBACK_BYTES = 1 << 20


def _error(reason: str) -> bytes:
    return json.dumps({"error": reason}).encode()


def metrics_response(registry: Any) -> tuple[int, str, bytes]:
    """A registry's exposition (501 with the install hint without prometheus-client)."""
    if registry is None:
        return 501, "text/plain", _NO_CLIENT
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return 200, CONTENT_TYPE_LATEST, generate_latest(registry)


class Endpoints:
    """``metrics()`` and ``health()`` as (status code, content type, body)."""

    def __init__(self, services: DeviceServices) -> None:
        self.services = services
        self.registry = make_registry(services)
        if self.registry is None:
            log.warning("prometheus-client is not installed: /metrics disabled (pip install 'edge-runtime[monitor]')")

    def metrics(self) -> tuple[int, str, bytes]:
        return metrics_response(self.registry)

    def feedback(self, body: bytes) -> tuple[int, str, bytes]:
        """POST /feedback: labels for predictions (monitoring.field); 400 with one line for a bad document."""
        from edge_runtime.monitoring.field import FeedbackError

        if len(body) > MAX_FEEDBACK_BYTES:
            return 413, "application/json", _error(f"feedback body over {MAX_FEEDBACK_BYTES} bytes")
        try:
            doc = json.loads(body)
            result = self.services.monitor.feedback(doc)
        except (ValueError, RecursionError) as exc:  # json's errors and FeedbackError are ValueErrors
            why = str(exc) if isinstance(exc, FeedbackError) else "the body is not JSON"
            return 400, "application/json", _error(why)
        return 200, "application/json", json.dumps(result).encode()

    def health(self) -> tuple[int, str, bytes]:
        doc = self.services.health()
        code = 503 if doc.get("status") == "unhealthy" else 200
        return code, "application/json", json.dumps(doc, default=str).encode()


class MonitorHttpServer:
    """``start()`` serves :class:`Endpoints` on a daemon thread; ``port`` is the bound port (0 picks a free one)."""

    def __init__(self, services: DeviceServices, host: str = "127.0.0.1", port: int = 0) -> None:
        self.endpoints = Endpoints(services)
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread: threading.Thread | None = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        endpoints = self.endpoints

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(*endpoints.metrics())
                elif path in ("/health", "/healthz"):
                    self._send(*endpoints.health())
                else:
                    self._send(404, "text/plain", b"not found: try /metrics or /health\n")

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] != "/feedback":
                    self._send(404, "text/plain", b"not found: POST labels to /feedback\n")
                    return
                try:
                    size = int(self.headers.get("Content-Length") or 0)
                except ValueError:
                    size = -1
                if not 0 <= size <= MAX_FEEDBACK_BYTES:
                    self.close_connection = True
                    self._send(413, "application/json", _error(f"feedback body over {MAX_FEEDBACK_BYTES} bytes"))
                    return
                self._send(*endpoints.feedback(self.rfile.read(size)))

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:
                log.debug("http: " + fmt, *args)

        return Handler

    def start(self) -> MonitorHttpServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="monitor-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
