"""`edge-runtime serve --package PKG`: the runtime as an HTTP microservice (FastAPI + uvicorn, extra "serve").

Every prediction also feeds the monitor: /metrics and /health are served on the same port, and with
``--config device.yaml`` (or ``--mqtt``/``--device-id``/``--outbox``) metric records go to the outbox and on to MQTT.
It listens on 127.0.0.1 unless ``--host`` says otherwise; off loopback, give it a ``--token-file``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from edge_runtime.commands.run import (
    add_device_arguments,
    add_model_arguments,
    check_model_arguments,
    device_config,
    load_model,
)
from edge_runtime.errors import ConfigError, MissingDependencyError


def configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    _add_guard_arguments(p)
    add_device_arguments(p, http=False)


def _add_guard_arguments(p: argparse.ArgumentParser) -> None:
    from edge_runtime.serve_guard import MAX_PIXELS

    g = p.add_argument_group("limits and access")
    g.add_argument("--token-file", metavar="PATH", help="require 'Authorization: Bearer <token>' (the file's one "
                   "line) on every path but /healthz")  # fmt: skip
    g.add_argument("--max-pixels", type=int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse images whose header declares more pixels, before decoding (default {MAX_PIXELS}, "
                   "a 4096x2160 frame)")  # fmt: skip
    g.add_argument("--workers", type=int, default=2, metavar="N",
                   help="requests decoded and predicted at once, off the event loop (default 2)")
    g.add_argument("--max-queue", type=int, default=8, metavar="N",
                   help="requests waiting for a worker; more get 503 at once (default 8)")


def serve_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The ServeConfig of the flags (reads the token file); ConfigError with the flag's name when one is wrong."""
    from edge_runtime.serve_guard import ServeConfig, load_token

    for flag, value, low in (("--max-pixels", args.max_pixels, 1), ("--workers", args.workers, 1),
                             ("--max-queue", args.max_queue, 0)):  # fmt: skip
        if value < low:
            raise ConfigError(f"{flag} {value}: must be at least {low}")
    token = load_token(args.token_file) if args.token_file else None
    return ServeConfig(max_pixels=args.max_pixels, workers=args.workers, queue=args.max_queue, token=token)


@contextmanager
def _signals_end_cleanly() -> Iterator[None]:
    """uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was there
    before it; a no-op handler here turns that into a normal exit 0, as with `run` (systemctl stop is no failure)."""
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    check_model_arguments(args)
    config = serve_config(args)
    if config.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning("serving on %s without --token-file: anyone who reaches the port can "
                                            "use the model and read its metrics", args.host)  # fmt: skip
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("uvicorn (for `serve`)", "serve") from exc
    from edge_runtime.device_config import DeviceConfig
    from edge_runtime.monitoring.service import start_services
    from edge_runtime.serve import ModelService, create_app

    device = device_config(args) or DeviceConfig(device_id="local")  # no config: monitor in memory, no outbox
    if device.sources:
        raise ConfigError(f"{args.config}: serve takes its inputs as HTTP requests; sources: is for `run`")
    service = ModelService(lambda: load_model(args))
    service.load(raise_errors=True)  # before listening: a bad package fails with one line, not a 503 forever
    source = {"kind": "http", "spec": f"http://{args.host}:{args.port}/predict"}
    services = start_services(device, service.model.manifest, http=False, source=source)
    try:
        app = create_app(service, load_in_background=False, services=services, config=config)
        level = "info" if logging.getLogger().level <= logging.INFO else "warning"
        with _signals_end_cleanly():
            uvicorn.run(app, host=args.host, port=args.port, log_level=level)
    finally:
        services.close()  # idempotent: normally done by the app's shutdown (which also closes the model)
    return 0
