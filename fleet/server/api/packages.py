"""/api/v1/packages/{sha256}: package archives for devices, with HTTP Range, behind each device's own token.

Devices find this URL in the signed desired document (``fleet serve --public-url``). 401 without a valid device
token, 403 for a package that was not delivered to the device or its groups (whether it exists or not)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from fleet.server import device_auth
from fleet.server.deps import Server, server
from fleet.server.registry import package_path

router = APIRouter(prefix="/packages", tags=["packages"])
SHA = PathParam(pattern=r"^[0-9a-f]{64}$")


@router.get("/{sha256}")
def download(request: Request, sha256: str = SHA, srv: Server = Depends(server)) -> FileResponse:
    """The archive's bytes for a device (``Authorization: Bearer <device token>``); Range resumes a download."""
    authz = request.headers.get("authorization", "")
    token = authz[7:].strip() if authz.lower().startswith("bearer ") else ""
    with srv.engine.connect() as conn:
        device = device_auth.device_for_token(conn, token) if token else None
        if device is None:
            srv.downloads.add("unauthorized")
            raise HTTPException(401, "a valid device token is required (edge-runtime fleet device-token DEVICE)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not device_auth.may_fetch(conn, device, sha256):
            srv.downloads.add("forbidden")
            raise HTTPException(403, f"package {sha256[:12]} was not delivered to {device} or its groups")
    path = package_path(srv.settings.data_dir, sha256)
    if not path.is_file():
        srv.downloads.add("missing")
        raise HTTPException(404, f"the stored package {sha256[:12]} is missing")
    srv.downloads.add("partial" if request.headers.get("range") else "full")
    return FileResponse(path, media_type="application/octet-stream", filename=f"{sha256}.erpkg")
