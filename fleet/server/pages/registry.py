"""Dashboard pages for the model registry and rollouts (pause, resume and abort forms, CSRF-checked)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Form, HTTPException
from fastapi.responses import HTMLResponse

from fleet.server import registry as reg
from fleet.server import rollouts as ro
from fleet.server.auth import User, check_csrf
from fleet.server.deps import Server, server
from fleet.server.errors import RegistryError
from fleet.server.pages import page_user, render

router = APIRouter(include_in_schema=False)


@router.get("/registry")
def registry_page(srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    with srv.engine.connect() as conn:
        models = [reg.model(conn, m["name"]) for m in reg.models(conn)]
    return render("registry.html", user=user, models=models)


def _rollout_page(srv: Server, user: User, rid: int, status: int = 200, **flash: str) -> HTMLResponse:
    with srv.engine.connect() as conn:
        try:
            job = ro.show(conn, rid)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
    return render("rollout.html", status, user=user, r=job, **flash)


@router.get("/rollouts")
def rollouts_page(srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    with srv.engine.connect() as conn:
        items = ro.listing(conn)
    return render("rollouts.html", user=user, items=items)


@router.get("/rollouts/{rid}")
def rollout_page(rid: int, srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    return _rollout_page(srv, user, rid)


@router.post("/rollouts/{rid}/{action}")
def rollout_action(rid: int, action: Literal["pause", "resume", "abort"], csrf: str = Form(""),
                   srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    if not check_csrf(user, csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    try:
        out = ro.operator_event(srv.engine, user, rid, action)
    except PermissionError as exc:
        return _rollout_page(srv, user, rid, 403, flash=f"refused: {exc}", flash_kind="err")
    except RegistryError as exc:
        return _rollout_page(srv, user, rid, 409, flash=f"refused: {exc}", flash_kind="err")
    return _rollout_page(srv, user, rid, flash=f"rollout {rid}: {out['state']}")
