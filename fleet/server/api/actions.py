"""/api/v1/devices/{id}/commands/...: operator actions (bearer token; browser forms go through the pages)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.monitoring.collect import CollectionPolicy
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


def _set_policy(srv: Server, user: User, request: Request, scope: str, policy: CollectionPolicy) -> dict[str, Any]:
    if not check_csrf(user, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "missing or wrong CSRF token")
    try:
        return srv.actions.set_policy(user, scope, policy)  # type: ignore[no-any-return]
    except PermissionError as exc:
        raise HTTPException(403, str(exc)) from None
    except ActionRefused as exc:
        raise HTTPException(409, str(exc)) from None


@router.put("/policies/fleet", status_code=202)
def set_fleet_policy(body: CollectionPolicy, request: Request, srv: Server = Depends(server),
                     user: User = Depends(current_user)) -> dict[str, Any]:
    """Set the fleet's collection policy (operator; signed with the server's operator key; retained; audited)."""
    return _set_policy(srv, user, request, "fleet", body)


@router.put("/policies/groups/{group}", status_code=202)
def set_group_policy(group: str = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"), *, body: CollectionPolicy,
                     request: Request, srv: Server = Depends(server),
                     user: User = Depends(current_user)) -> dict[str, Any]:
    """Set a group's collection policy (overrides the fleet's on that group's devices)."""
    return _set_policy(srv, user, request, f"group:{group}", body)
