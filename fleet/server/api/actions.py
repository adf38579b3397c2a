"""/api/v1/devices/{id}/commands/...: operator actions (bearer token; browser forms go through the pages)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from fleet.server.auth import User, check_csrf
from fleet.server.db import queries
from fleet.server.deps import Server, current_user, server
from fleet.server.errors import ActionRefused

router = APIRouter(tags=["actions"])


class SampleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max: int = Field(default=10, ge=1, le=100, description="Samples the device uploads at most.")


def run_action(srv: Server, user: User, device: str, fn: Any) -> Any:
    """Common checks, then ``fn()``; maps refusals to HTTP answers (the action itself audits)."""
    with srv.engine.connect() as conn:
        if queries.device(conn, device) is None:
            raise HTTPException(404, f"no device {device!r}")
    try:
        return fn()
    except PermissionError as exc:
        raise HTTPException(403, str(exc)) from None
    except ActionRefused as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/devices/{device_id}/commands/upload-samples", status_code=202)
def upload_samples(device_id: str, body: SampleRequest, request: Request, srv: Server = Depends(server),
                   user: User = Depends(current_user)) -> dict[str, Any]:
    """Ask a device to upload its kept samples (operator; signed with the server's operator key; audited)."""
    if not check_csrf(user, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "missing or wrong CSRF token")
    return run_action(srv, user, device_id, lambda: srv.actions.request_samples(user, device_id, body.max))  # type: ignore[no-any-return]
