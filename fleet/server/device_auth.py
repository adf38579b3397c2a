"""Per-device credentials for package downloads over HTTP(S), and which packages each device may fetch.

An operator provisions a device with ``edge-runtime fleet device-token DEVICE --out FILE``: 32 random bytes, shown
once (written 0600), of which the server keeps only the sha256, so a copy of the database lets nobody download.
A new token for the same device replaces the old one (rotation); ``--revoke`` removes it. The agent sends it as a
bearer token (``update.http_token_file``).

A valid token is not enough: the device may fetch a package only if the server delivered that package (by
sha256) to the device itself or to a group the device belongs to (``package_grants``), so one device's token
cannot pull another customer's or group's model. Group membership is what the device last reported in its
retained state; a device that lies about its groups gets what those groups were given, nothing more.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any

from sqlalchemy import delete, insert, or_, select, update

from fleet.server.db import tables as t
from fleet.server.db.engine import dialect_insert
from fleet.server.errors import AuthError

TOKEN_PREFIX = "erd_"  # noqa: S105 - not a secret: marks a device token apart from a user's API token in logs and files


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_device_token(engine: Any, device: str, by: str) -> str:
    """A new download token for ``device`` (replacing any earlier one); only its hash is stored."""
    from edge_runtime.sync.topics import check_segment

    try:
        check_segment(device, "device id")
    except ValueError as exc:
        raise AuthError(str(exc)) from None
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    values = {"token_hash": _hash(token), "created": time.time(), "created_by": by}
    dc = t.device_credentials
    with engine.begin() as conn:
        if not conn.execute(update(dc).where(dc.c.device == device).values(**values)).rowcount:
            conn.execute(insert(dc).values(device=device, **values))
    return token


def revoke_device_token(engine: Any, device: str) -> bool:
    with engine.begin() as conn:
        return bool(conn.execute(delete(t.device_credentials).where(t.device_credentials.c.device == device))
                    .rowcount)


def device_for_token(conn: Any, token: str) -> str | None:
    """The device a token belongs to, or None (unknown, revoked or not a device token)."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    dc = t.device_credentials
    return conn.execute(select(dc.c.device).where(dc.c.token_hash == _hash(token))).scalar_one_or_none()


def grant(conn: Any, sha256: str, targets: list[str]) -> None:
    """Let ``targets`` (device ids, ``device:ID`` or ``group:NAME``) download the package ``sha256``."""
    rows = [{"sha256": sha256, "target": _norm(tg), "granted": time.time()} for tg in targets]
    if rows:
        conn.execute(dialect_insert(conn)(t.package_grants).values(rows).on_conflict_do_nothing())


def _norm(target: str) -> str:
    return target if target.startswith("group:") else target.removeprefix("device:")


def may_fetch(conn: Any, device: str, sha256: str) -> bool:
    """Whether ``sha256`` was delivered to ``device`` or to one of the groups it reports."""
    row = conn.execute(select(t.devices.c.groups).where(t.devices.c.id == device)).first()
    allowed = [device, *(f"group:{g}" for g in ((row.groups if row is not None else None) or []))]
    g = t.package_grants
    return conn.execute(select(g.c.target).where(g.c.sha256 == sha256, or_(*(g.c.target == a for a in allowed)))
                        .limit(1)).first() is not None


class DownloadCounters:
    """Package requests answered, by outcome (``fleet_package_requests_total`` on /metrics)."""

    OUTCOMES = ("full", "partial", "unauthorized", "forbidden", "missing")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.OUTCOMES, 0)

    def add(self, outcome: str) -> None:
        with self._lock:
            self._counts[outcome] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
