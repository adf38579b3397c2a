"""/api/v1/series, /api/v1/events, /api/v1/samples and /api/v1/audit."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import FileResponse

from fleet.server.auth import User
from fleet.server.db import queries
from fleet.server.deps import Server, current_user, operator, server

router = APIRouter(tags=["records"])


@router.get("/series")
def series(device: str | None = None, version: str | None = None, since: float | None = None,
           until: float | None = None, step: Literal["auto", "raw", "1m", "1h"] = "auto",
           limit: int = Query(2000, ge=1, le=20000), srv: Server = Depends(server),
           _u: User = Depends(current_user)) -> dict[str, Any]:
    """Time series of one device, or averaged over the devices on one version (latency, fps, drift, ...)."""
    if device is None and version is None:
        raise HTTPException(422, "give device or version")
    with srv.engine.connect() as conn:
        return queries.series(conn, device=device, version=version, since=since, until=until, step=step,
                              limit=limit)


@router.get("/events")
def events(device: str | None = None, type: str | None = None, since: float | None = None,  # noqa: A002
           limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0), srv: Server = Depends(server),
           _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        total, items = queries.events(conn, device=device, type_=type, since=since, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


@router.get("/samples")
def samples(device: str | None = None, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
            srv: Server = Depends(server), _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        total, items = queries.samples(conn, device=device, limit=limit, offset=offset)
    return {"total": total, "limit": limit, "offset": offset, "items": items}


def sample_file(srv: Server, device: str, sample_id: str) -> FileResponse:
    with srv.engine.connect() as conn:
        row = queries.sample(conn, device, sample_id)
    if row is None:
        raise HTTPException(404, "no such sample")
    path = srv.settings.sample_dir / row["sha256"][:2] / f"{row['sha256']}.{row['ext']}"
    media = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg"}.get(row["ext"], "application/octet-stream")
    return FileResponse(path, media_type=media)


@router.get("/samples/{device}/{sample_id}/content")
def sample_content(device: str, sample_id: str, srv: Server = Depends(server),
                   _u: User = Depends(current_user)) -> FileResponse:
    return sample_file(srv, device, sample_id)


@router.get("/audit")
def audit(limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0), srv: Server = Depends(server),
          _u: User = Depends(operator)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return {"items": queries.audit_log(conn, limit, offset)}
