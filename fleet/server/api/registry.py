"""/api/v1/registry/...: model versions with lineage, aliases, promote and revert, package downloads."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleet.server import moves
from fleet.server import registry as reg
from fleet.server.auth import User, check_csrf
from fleet.server.deps import Server, current_user, operator, server
from fleet.server.errors import ActionRefused, NotRegistered, RegistryError

router = APIRouter(prefix="/registry", tags=["registry"])
MAX_PACKAGE_BYTES = 2 << 30  # an upload beyond this is refused while it streams
MAX_LINEAGE_HEADER = 16 << 10
NAME = PathParam(pattern=reg.NAME_PATTERN)


class MoveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str | None = Field(default=None, max_length=64, description="Promote: the version the alias moves to.")
    alias: str = Field(default=reg.PRODUCTION, pattern=reg.NAME_PATTERN, description="The alias to move.")
    target: str | None = Field(default=None, max_length=200, description="device id or group:NAME it is for "
                               "(default: the alias's current target; none: the alias only moves).")


def answer(fn: Any) -> Any:
    try:
        return fn()
    except PermissionError as exc:
        raise HTTPException(403, str(exc)) from None
    except NotRegistered as exc:
        raise HTTPException(404, str(exc)) from None
    except (RegistryError, ActionRefused) as exc:
        raise HTTPException(409, str(exc)) from None


def require_csrf(user: User, request: Request) -> None:
    if not check_csrf(user, request.headers.get("x-csrf-token")):
        raise HTTPException(403, "missing or wrong CSRF token")


def _extra(request: Request) -> reg.LineageExtra:
    raw = request.headers.get("x-lineage", "{}")
    if len(raw) > MAX_LINEAGE_HEADER:
        raise HTTPException(413, f"X-Lineage is larger than {MAX_LINEAGE_HEADER} bytes")
    try:
        return reg.LineageExtra.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise HTTPException(422, f"bad X-Lineage header: {str(exc).splitlines()[0]}") from None


@router.post("/packages", status_code=201)
async def register(request: Request, srv: Server = Depends(server), user: User = Depends(operator)) -> Any:
    """Register a signed package archive (the request body); lineage additions in the X-Lineage JSON header."""
    require_csrf(user, request)
    extra = _extra(request)
    incoming = srv.settings.data_dir / "packages" / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=incoming, suffix=".erpkg", delete=False) as f:
        tmp, total = Path(f.name), 0
        async for chunk in request.stream():
            total += len(chunk)
            if total > MAX_PACKAGE_BYTES:
                tmp.unlink(missing_ok=True)
                raise HTTPException(413, f"the package is larger than {MAX_PACKAGE_BYTES} bytes")
            f.write(chunk)
    try:
        return await run_in_threadpool(answer, lambda: reg.register(srv.engine, srv.settings.data_dir, user, tmp,
                                                                     extra))
    finally:
        tmp.unlink(missing_ok=True)


@router.get("/models")
def models(srv: Server = Depends(server), _u: User = Depends(current_user)) -> dict[str, Any]:
    with srv.engine.connect() as conn:
        return {"items": reg.models(conn)}


@router.get("/models/{name}")
def model(name: str = NAME, srv: Server = Depends(server), _u: User = Depends(current_user)) -> Any:
    with srv.engine.connect() as conn:
        return answer(lambda: reg.model(conn, name))


@router.get("/models/{name}/versions/{version}")
def version(version: str, name: str = NAME, srv: Server = Depends(server), _u: User = Depends(current_user)) -> Any:
    with srv.engine.connect() as conn:
        return answer(lambda: reg.version_doc(reg.get_version(conn, name, version)._mapping))


@router.get("/models/{name}/versions/{version}/lineage")
def lineage(version: str, name: str = NAME, srv: Server = Depends(server), _u: User = Depends(current_user)) -> Any:
    with srv.engine.connect() as conn:
        return {"chain": answer(lambda: reg.lineage(conn, name, version))}


@router.get("/models/{name}/versions/{version}/package")
def package(version: str, name: str = NAME, srv: Server = Depends(server),
            _u: User = Depends(current_user)) -> FileResponse:
    """The archive's bytes (HTTP Range supported: a download resumes where it stopped)."""
    with srv.engine.connect() as conn:
        row = answer(lambda: reg.get_version(conn, name, version))
    path = reg.package_path(srv.settings.data_dir, row.sha256)
    if not path.is_file():
        raise HTTPException(404, f"the stored package of {name} {version} is missing")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{name}-{version}.erpkg")


@router.post("/models/{name}/promote")
def promote(body: MoveRequest, request: Request, name: str = NAME, srv: Server = Depends(server),
            user: User = Depends(current_user)) -> Any:
    """Move the alias to ``version`` and publish the signed desired document for its target (operator)."""
    require_csrf(user, request)
    if body.version is None:
        raise HTTPException(422, "promote needs a version")
    return answer(lambda: moves.move(srv.engine, srv.actions, srv.settings.data_dir, user, name, body.version,
                                    body.alias, body.target))


@router.post("/models/{name}/revert")
def revert(body: MoveRequest, request: Request, name: str = NAME, srv: Server = Depends(server),
           user: User = Depends(current_user)) -> Any:
    """Move the alias back to where it stood before its last move, with a signed rollback document (operator)."""
    require_csrf(user, request)
    if body.version is not None:
        raise HTTPException(422, "revert takes no version: it goes back to the alias's previous one")
    return answer(lambda: moves.move(srv.engine, srv.actions, srv.settings.data_dir, user, name, None,
                                    body.alias, body.target, revert=True))
