"""The dashboard: server-rendered pages (Jinja2, inline SVG charts), a session cookie and CSRF on every form."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from fleet.server.auth import User, check_csrf, login, logout
from fleet.server.db import queries
from fleet.server.deps import SESSION_COOKIE, Server, optional_user, server
from fleet.server.errors import ActionRefused
from fleet.server.pages.charts import line_chart

router = APIRouter(include_in_schema=False)
_env = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                   autoescape=select_autoescape(["html"]))
_env.filters["ts"] = lambda v: "-" if v is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(v))


def _ago(v: float | None) -> str:
    if v is None or v <= 0:
        return "-"
    s = max(0, int(time.time() - v))
    return f"{s} s ago" if s < 120 else f"{s // 60} min ago" if s < 7200 else f"{s // 3600} h ago"


_env.filters["ago"] = _ago


class LoginRequired(Exception):  # noqa: N818 - control flow to the login page, not an error
    """Raised by page dependencies; the app turns it into a redirect to /login."""


def page_user(request: Request) -> User:
    user = optional_user(request)
    if user is None:
        raise LoginRequired
    return user


def render(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(**ctx), status_code=status)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    return render("login.html", user=None)


@router.post("/login")
def login_post(username: str = Form(..., max_length=64), password: str = Form(..., max_length=1024),
               srv: Server = Depends(server)) -> Response:
    session = login(srv.engine, username, password)
    if session is None:
        return render("login.html", 401, user=None, flash="wrong user name or password", flash_kind="err")
    resp = RedirectResponse("/", status_code=303)
    resp.set_cookie(SESSION_COOKIE, session[0], httponly=True, samesite="strict", secure=srv.settings.secure_cookies,
                    max_age=12 * 3600)
    return resp


@router.post("/logout")
def logout_post(request: Request, csrf: str = Form(""), srv: Server = Depends(server),
                user: User = Depends(page_user)) -> Response:
    if not check_csrf(user, csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    logout(srv.engine, request.cookies.get(SESSION_COOKIE, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE)
    return resp


PAGE = 100  # devices per overview page


@router.get("/")
def overview_page(offset: int = 0, srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    offset = max(0, offset)
    with srv.engine.connect() as conn:
        ov = queries.overview(conn)
        total, devices = queries.devices(conn, limit=PAGE, offset=offset)
    return render("overview.html", user=user, ov=ov, total=total, devices=devices, offset=offset, page=PAGE)


def _device_page(srv: Server, user: User, device_id: str, hours: float = 6, **flash: Any) -> HTMLResponse:
    with srv.engine.connect() as conn:
        d = queries.device(conn, device_id)
        if d is None:
            raise HTTPException(404, f"no device {device_id!r}")
        pts = queries.series(conn, device=device_id, since=time.time() - hours * 3600, step="raw")["points"]
        history = queries.update_history(conn, device_id, 20)
        _, events = queries.events(conn, device=device_id, limit=20)
        _, samples = queries.samples(conn, device=device_id, limit=24)
    charts = [line_chart("end-to-end latency (ms)", pts, ["latency_p50", "latency_p99"], " ms"),
              line_chart("confidence (mean)", pts, ["confidence_mean"]),
              line_chart("drift (max PSI)", pts, ["drift_max"]),
              line_chart("throughput (fps)", pts, ["fps"])]
    return render("device.html", status=flash.pop("status", 200), user=user, d=d, charts=charts, history=history,
                  events=events, samples=samples, hours=hours, **flash)


@router.get("/devices/{device_id}")
def device_page(device_id: str, srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    return _device_page(srv, user, device_id)


@router.post("/devices/{device_id}/upload-samples")
def request_samples(device_id: str, csrf: str = Form(""), max: int = Form(10),  # noqa: A002
                    srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    if not check_csrf(user, csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    try:
        res = srv.actions.request_samples(user, device_id, max)
    except PermissionError as exc:
        return _device_page(srv, user, device_id, flash=f"refused: {exc}", flash_kind="err", status=403)
    except ActionRefused as exc:
        return _device_page(srv, user, device_id, flash=f"refused: {exc}", flash_kind="err", status=409)
    return _device_page(srv, user, device_id, flash=f"requested up to {res['max']} samples "
                        f"(request {res['request_id']})")


@router.get("/drift")
def drift_page(hours: float = 24, srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    with srv.engine.connect() as conn:
        dr = queries.drift(conn, time.time() - hours * 3600)
    return render("drift.html", user=user, dr=dr, hours=hours)


from fleet.server.pages import registry as _registry_pages  # noqa: E402 - its routes use render and page_user

router.include_router(_registry_pages.router)
from fleet.server.pages import retrain as _retrain_pages  # noqa: E402 - its routes use render and page_user

router.include_router(_retrain_pages.router)
