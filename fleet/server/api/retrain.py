"""/api/v1/labels and /api/v1/retrain: sample labels (review, set, import), re-training runs, remote workers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from fleet.retrain import labels as lab
from fleet.retrain import runs as rr
from fleet.retrain import training, triggers
from fleet.server.api.registry import answer, require_csrf
from fleet.server.auth import User
from fleet.server.deps import Server, current_user, operator, server

router = APIRouter(tags=["retrain"])
MAX_MODEL_BYTES = 2 << 30
MAX_LOG_BYTES = 8 << 20


class LabelItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field(max_length=128)
    sample_id: str = Field(max_length=128)
    label: str = Field(min_length=1, max_length=lab.MAX_LABEL)
    boxes: list[list[Any]] | None = Field(default=None, max_length=1000, description="[[class, x0, y0, x1, y1]]")


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    origin: Literal["person", "import"] = Field(default="person", description="Who says so (teacher labels come "
                                                "from POST /labels/teacher only).")
    items: list[LabelItem] = Field(max_length=lab.MAX_IMPORT)


class ImportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: Literal["folders", "csv", "coco", "yolo"]
    path: str = Field(max_length=4000, description="A file or folder on the server.")


class TeacherRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=64, description="The student: its production (else newest) version's "
                       "preprocessing and class labels are used.")
    teacher: str = Field(max_length=4000, description="Float ONNX model on the server.")
    min_confidence: float = Field(default=0.9, gt=0, le=1, description="Lower teacher probabilities label nothing.")


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=64)
    note: str | None = Field(default=None, max_length=500, description="Why, in the operator's words.")


def _runner(srv: Server) -> Any:
    if srv.retrain is None:
        raise HTTPException(409, "re-training does not run on this server (fleet serve --retrain FILE)")
    return srv.retrain


@router.get("/labels")
def review(unlabelled: bool = False, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0),
           srv: Server = Depends(server), _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return lab.review(conn, unlabelled_only=unlabelled, limit=limit, offset=offset)


@router.post("/labels")
def set_labels(body: LabelRequest, request: Request, srv: Server = Depends(server),
               user: User = Depends(current_user)) -> Any:
    """Set labels (operator): a person's win over imported ones, which win over a teacher's."""
    require_csrf(user, request)
    items = [lab.Label(i.device, i.sample_id, i.label, i.boxes) for i in body.items]
    return answer(lambda: lab.set_labels(srv.engine, user, items, body.origin))


@router.post("/labels/import")
def import_labels(body: ImportRequest, request: Request, srv: Server = Depends(server),
                  user: User = Depends(current_user)) -> Any:
    """Import class folders, a CSV, a COCO JSON or YOLO text labels from a path on the server (operator)."""
    require_csrf(user, request)
    return answer(lambda: lab.import_labels(srv.engine, srv.settings.sample_dir, user, body.format,
                                            Path(body.path)))


@router.post("/labels/teacher")
def teacher_labels(body: TeacherRequest, request: Request, srv: Server = Depends(server),
                   user: User = Depends(current_user)) -> Any:
    """Label the samples nobody labelled with a teacher model's top class, its confidence kept (operator)."""
    from fleet.retrain.teacher import auto_label

    require_csrf(user, request)

    def go() -> Any:
        with srv.engine.connect() as conn:
            version = triggers.parent_version(conn, body.model)
        if version is None:
            raise rr.NotRegistered(f"no model {body.model!r} in the registry")
        return auto_label(srv.engine, srv.settings.data_dir, user, body.model, version, Path(body.teacher),
                          body.min_confidence)

    return answer(go)


@router.get("/retrain/runs")
def runs(model: str | None = None, limit: int = Query(100, ge=1, le=1000), srv: Server = Depends(server),
         _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return {"items": rr.listing(conn, model, limit)}


@router.post("/retrain/runs", status_code=201)
def start_run(body: RunRequest, request: Request, srv: Server = Depends(server),
              user: User = Depends(current_user)) -> Any:
    """Start a run by hand (operator), under the server's retrain.yaml for the model."""
    require_csrf(user, request)
    runner = _runner(srv)
    return answer(lambda: runner.by_hand(user, body.model, body.note))


@router.get("/retrain/runs/{rid}")
def show(rid: int, srv: Server = Depends(server), _u: User = Depends(current_user)) -> Any:
    with srv.engine.connect() as conn:
        return answer(lambda: rr.show(conn, rid))


@router.get("/retrain/runs/{rid}/log", response_class=PlainTextResponse)
def run_log(rid: int, srv: Server = Depends(server), _u: User = Depends(current_user)) -> str:
    return training.tail(_runner(srv).run_dir(rid).log)


# ------------------------------------------------------------------------------------------------ workers
@router.post("/retrain/claim")
def claim(worker: str = Query(..., min_length=1, max_length=128), srv: Server = Depends(server),
          _u: User = Depends(operator)) -> Any:
    """A remote worker asks for training work: a run, or null when there is none."""
    return {"run": _runner(srv).claim(worker)}


@router.get("/retrain/runs/{rid}/data/{name}")
def run_data(rid: int, name: Literal["train.npz", "snapshot.json"], srv: Server = Depends(server),
             _u: User = Depends(operator)) -> FileResponse:
    """The run's data folder, as the training command sees it."""
    path = _runner(srv).run_dir(rid).data / name
    if not path.is_file():
        raise HTTPException(404, f"run {rid} has no {name}")
    return FileResponse(path, media_type="application/octet-stream", filename=name)


@router.get("/retrain/runs/{rid}/parent-model")
def parent_model(rid: int, srv: Server = Depends(server), _u: User = Depends(operator)) -> FileResponse:
    root = _runner(srv).run_dir(rid).root
    found = sorted(root.glob("parent.*"))
    if not found:
        raise HTTPException(404, f"run {rid} has no parent model")
    return FileResponse(found[0], media_type="application/octet-stream", filename=found[0].name)


async def _body(request: Request, dest: Path, limit: int) -> int:
    total = 0
    with dest.open("wb") as f:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise HTTPException(413, f"larger than {limit} bytes")
            f.write(chunk)
    return total


@router.post("/retrain/runs/{rid}/log")
async def worker_log(rid: int, request: Request, srv: Server = Depends(server), _u: User = Depends(operator)) -> Any:
    """The worker's log of the attempt (kept with the run; sent before the result)."""
    rd = _runner(srv).run_dir(rid)
    rd.root.mkdir(parents=True, exist_ok=True)
    await _body(request, rd.root / "worker.log", MAX_LOG_BYTES)
    return {"stored": True}


@router.post("/retrain/runs/{rid}/result")
async def worker_result(rid: int, request: Request, worker: str = Query(..., max_length=128), rc: int = Query(...),
                        srv: Server = Depends(server), _u: User = Depends(operator)) -> Any:
    """The worker's exit code and (rc 0) the trained model as the body."""
    runner = _runner(srv)
    rd = runner.run_dir(rid)
    rd.root.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=rd.root, suffix=".upload", delete=False) as f:
        tmp = Path(f.name)
    try:
        size = await _body(request, tmp, MAX_MODEL_BYTES)
        log_file = rd.root / "worker.log"
        log_text = log_file.read_bytes() if log_file.is_file() else b""
        return await run_in_threadpool(answer, lambda: runner.worker_result(rid, worker, rc, tmp if size else None,
                                                                            log_text))
    finally:
        tmp.unlink(missing_ok=True)


# Last: its {action} segment would otherwise take the worker's /log and /result.
@router.post("/retrain/runs/{rid}/{action}")
def act(rid: int, action: Literal["approve", "cancel"], request: Request, srv: Server = Depends(server),
        user: User = Depends(current_user)) -> Any:
    """Approve a candidate for its canary rollout, or cancel a run (operator; audited)."""
    require_csrf(user, request)
    runner = _runner(srv)
    return answer(lambda: rr.operator_event(srv.engine, user, rid, action, runner.cancel))
