"""Dashboard pages for labels (keyboard-friendly review, batch confirm) and re-training runs (approve, cancel)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse

from fleet.retrain import labels as lab
from fleet.retrain import runs as rr
from fleet.retrain import training
from fleet.server.auth import User, check_csrf
from fleet.server.deps import Server, server
from fleet.server.errors import RegistryError
from fleet.server.pages import page_user, render

router = APIRouter(include_in_schema=False)
PAGE = 48


def _labels_page(srv: Server, user: User, offset: int, unlabelled: bool, status: int = 200,
                 **flash: str) -> HTMLResponse:
    with srv.engine.connect() as conn:
        page = lab.review(conn, unlabelled_only=unlabelled, limit=PAGE, offset=max(0, offset))
    return render("labels.html", status, user=user, page=page, unlabelled=unlabelled, **flash)


@router.get("/labels")
def labels_page(offset: int = 0, unlabelled: bool = False, srv: Server = Depends(server),
                user: User = Depends(page_user)) -> HTMLResponse:
    return _labels_page(srv, user, offset, unlabelled)


@router.post("/labels")
async def labels_post(request: Request, srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    """``label:DEVICE/ID`` sets a person's label; ``confirm:DEVICE/ID`` (or confirm_all) makes the shown label a
    person's (a teacher's or an import's label confirmed by someone looking at it)."""
    form = await request.form(max_fields=4 * PAGE + 10)
    if not check_csrf(user, str(form.get("csrf", ""))):
        raise HTTPException(403, "missing or wrong CSRF token")
    offset, unlabelled = int(str(form.get("offset", "0")) or 0), str(form.get("unlabelled", "0")) == "1"
    with srv.engine.connect() as conn:
        shown = {f"{s['device']}/{s['sample_id']}": s for s in
                 lab.review(conn, unlabelled_only=unlabelled, limit=PAGE, offset=max(0, offset))["items"]}
    items = []
    for key, s in shown.items():
        typed = str(form.get(f"label:{key}", "")).strip()
        confirm = form.get(f"confirm:{key}") or form.get("confirm_all")
        label = typed or (s["label"] if confirm else None)
        if label:
            items.append(lab.Label(s["device"], s["sample_id"], label))
    try:
        out = lab.set_labels(srv.engine, user, items, "person")
    except PermissionError as exc:
        return _labels_page(srv, user, offset, unlabelled, 403, flash=f"refused: {exc}", flash_kind="err")
    except RegistryError as exc:
        return _labels_page(srv, user, offset, unlabelled, 409, flash=f"refused: {exc}", flash_kind="err")
    return _labels_page(srv, user, offset, unlabelled, flash=f"{out['labelled']} labels saved")


def _run_page(srv: Server, user: User, rid: int, status: int = 200, **flash: str) -> HTMLResponse:
    with srv.engine.connect() as conn:
        try:
            run = rr.show(conn, rid)
        except RegistryError as exc:
            raise HTTPException(404, str(exc)) from None
    log = training.tail(srv.retrain.run_dir(rid).log, 64 << 10) if srv.retrain is not None else ""
    return render("retrain_run.html", status, user=user, r=run, log=log, final=[s.value for s in rr.FINAL], **flash)


def _runs_page(srv: Server, user: User, status: int = 200, **flash: str) -> HTMLResponse:
    with srv.engine.connect() as conn:
        items = rr.listing(conn)
    models = sorted(srv.retrain.policies) if srv.retrain is not None else []
    return render("retrain_runs.html", status, user=user, items=items, models=models, **flash)


@router.get("/retrain")
def runs_page(srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    return _runs_page(srv, user)


@router.post("/retrain/run")
def start_run(model: str = Form(..., max_length=64), csrf: str = Form(""), srv: Server = Depends(server),
              user: User = Depends(page_user)) -> HTMLResponse:
    if not check_csrf(user, csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    if srv.retrain is None:
        return _runs_page(srv, user, 409, flash="re-training does not run on this server", flash_kind="err")
    try:
        out = srv.retrain.by_hand(user, model)
    except PermissionError as exc:
        return _runs_page(srv, user, 403, flash=f"refused: {exc}", flash_kind="err")
    except RegistryError as exc:
        return _runs_page(srv, user, 409, flash=f"refused: {exc}", flash_kind="err")
    return _run_page(srv, user, out["id"], flash=f"run {out['id']} started")


@router.get("/retrain/{rid}")
def run_page(rid: int, srv: Server = Depends(server), user: User = Depends(page_user)) -> HTMLResponse:
    return _run_page(srv, user, rid)


@router.post("/retrain/{rid}/{action}")
def run_action(rid: int, action: Literal["approve", "cancel"], csrf: str = Form(""), srv: Server = Depends(server),
               user: User = Depends(page_user)) -> HTMLResponse:
    if not check_csrf(user, csrf):
        raise HTTPException(403, "missing or wrong CSRF token")
    try:
        out = rr.operator_event(srv.engine, user, rid, action, srv.retrain.cancel if srv.retrain else None)
    except PermissionError as exc:
        return _run_page(srv, user, rid, 403, flash=f"refused: {exc}", flash_kind="err")
    except RegistryError as exc:
        return _run_page(srv, user, rid, 409, flash=f"refused: {exc}", flash_kind="err")
    return _run_page(srv, user, rid, flash=f"run {rid}: {out['state']}")
