"""`edge-runtime serve --package PKG`: the runtime as an HTTP microservice (FastAPI + uvicorn, extra "serve")."""

from __future__ import annotations

import argparse
import logging

from edge_runtime.commands.run import add_model_arguments, load_model
from edge_runtime.errors import ConfigError, MissingDependencyError


def configure(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port {args.port} is not a TCP port")
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependencyError("uvicorn (for `serve`)", "serve") from exc
    from edge_runtime.serve import ModelService, create_app

    service = ModelService(lambda: load_model(args))
    service.load(raise_errors=True)  # before listening: a bad package fails with one line, not a 503 forever
    app = create_app(service, load_in_background=False)
    level = "info" if logging.getLogger().level <= logging.INFO else "warning"
    uvicorn.run(app, host=args.host, port=args.port, log_level=level)
    return 0
