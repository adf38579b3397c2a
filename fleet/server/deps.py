"""FastAPI dependencies: the server context, the current user, the operator role and CSRF."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fastapi import HTTPException, Request

from fleet.server.actions import Actions
from fleet.server.auth import User, lookup
from fleet.server.device_auth import DownloadCounters
from fleet.server.settings import ServerSettings

SESSION_COOKIE = "fleet_session"


@dataclass
class Server:
    """What every request handler may use."""

    settings: ServerSettings
    engine: Any
    actions: Actions
    ingest: Any | None = None  # fleet.server.ingest.Ingest when connected to a broker
    downloads: DownloadCounters = field(default_factory=DownloadCounters)  # device package requests
    retrain: Any | None = None  # fleet.retrain.runner.RetrainRunner when the server has retrain policies


def server(request: Request) -> Server:
    return request.app.state.server  # type: ignore[no-any-return]


def optional_user(request: Request) -> User | None:
    srv = server(request)
    authz = request.headers.get("authorization", "")
    if authz.lower().startswith("bearer "):
        return lookup(srv.engine, authz[7:].strip(), "api")
    cookie = request.cookies.get(SESSION_COOKIE)
    return lookup(srv.engine, cookie, "session") if cookie else None


def current_user(request: Request) -> User:
    user = optional_user(request)
    if user is None:
        raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Bearer"})
    return user


def operator(request: Request) -> User:
    user = current_user(request)
    if not user.is_operator:
        raise HTTPException(403, "operator role required")
    return user
