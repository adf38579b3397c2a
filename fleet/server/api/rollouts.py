"""/api/v1/rollouts: server-side rollout jobs (create, list, show with every step, pause, resume, abort)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request

from fleet.server import rollouts as ro
from fleet.server.api.registry import answer, require_csrf
from fleet.server.auth import User
from fleet.server.deps import Server, current_user, server

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


@router.post("", status_code=201)
def create(plan: ro.RolloutPlan, request: Request, srv: Server = Depends(server),
           user: User = Depends(current_user)) -> Any:
    """Start a rollout of a registered version to a group (operator): canaries, window, waves, then production."""
    require_csrf(user, request)
    return answer(lambda: ro.create(srv.engine, user, plan))


@router.get("")
def listing(limit: int = Query(100, ge=1, le=1000), srv: Server = Depends(server),
            _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return {"items": ro.listing(conn, limit)}


@router.get("/{rid}")
def show(rid: int, srv: Server = Depends(server), _u: User = Depends(current_user)) -> Any:
    with srv.engine.connect() as conn:
        return answer(lambda: ro.show(conn, rid))


@router.post("/{rid}/{action}")
def act(rid: int, action: Literal["pause", "resume", "abort"], request: Request, srv: Server = Depends(server),
        user: User = Depends(current_user)) -> Any:
    """Pause, resume or abort (operator; audited)."""
    require_csrf(user, request)
    if srv.ingest is None and action != "pause":
        raise HTTPException(409, "the server has no broker connection: rollouts do not run here")
    return answer(lambda: ro.operator_event(srv.engine, user, rid, action))
