"""/api/v1/devices, /api/v1/overview and /api/v1/drift."""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query

from fleet.server.auth import User
from fleet.server.db import queries
from fleet.server.deps import Server, current_user, server

router = APIRouter(tags=["devices"])


@router.get("/devices")
def list_devices(state: Literal["online", "offline", "drifting", "failed"] | None = None,
                 version: str | None = None, q: str | None = Query(None, max_length=128),
                 limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0),
                 srv: Server = Depends(server), _u: User = Depends(current_user)) -> dict[str, Any]:
    """Devices, those needing attention first (failed update, drifting, offline)."""
    with srv.engine.connect() as conn:
        total, items = queries.devices(conn, state=state, version=version, search=q, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/devices/{device_id}")
def get_device(device_id: str, srv: Server = Depends(server), _u: User = Depends(current_user)) -> dict[str, Any]:
    """One device: state, serving model, desired versus reported, and its update history."""
    with srv.engine.connect() as conn:
        dev = queries.device(conn, device_id)
        if dev is None:
            raise HTTPException(404, f"no device {device_id!r}")
        dev["update_history"] = queries.update_history(conn, device_id)
    return dev


@router.get("/overview")
def overview(srv: Server = Depends(server), _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return queries.overview(conn)


@router.get("/drift")
def drift(hours: float = Query(24, gt=0, le=24 * 400), srv: Server = Depends(server),
          _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return queries.drift(conn, time.time() - hours * 3600)
