"""The fleet server's REST API from the operator's side (`registry`, `retrain`): token from EDGE_FLEET_TOKEN, errors
as one line (ConfigError) naming the server's answer."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError


class ApiClient:
    def __init__(self, server: str | None, command: str) -> None:
        """``command``: the CLI command using it, named in the error when the server or token is missing."""
        token = os.environ.get("EDGE_FLEET_TOKEN")
        if not server or not token:
            raise ConfigError(f"{command} needs --server (or EDGE_FLEET_SERVER) and an API token in EDGE_FLEET_TOKEN")
        self.base, self.token = server.rstrip("/"), token
        if not self.base.startswith(("http://", "https://")):
            raise ConfigError(f"--server {self.base!r} must be an http:// or https:// URL")

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None, to: Path | None = None) -> Any:
        """``body`` is sent as JSON, ``raw`` as it is; the answer is parsed JSON, its bytes when it is not JSON, or
        None when streamed to the file ``to`` (a package may be large)."""
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        data = raw
        if body is not None:
            data, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method,  # noqa: S310
                                     headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=300) as r:  # noqa: S310 - the URL the user configured
                if to is not None:
                    with Path(to).open("wb") as f:
                        while chunk := r.read(1 << 20):
                            f.write(chunk)
                    return None
                payload = r.read()
                return json.loads(payload) if r.headers.get_content_type() == "application/json" else payload
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["detail"]
            except (ValueError, KeyError, TypeError):
                pass
            raise ConfigError(f"fleet server answered {exc.code}: {str(detail)[:300]}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot reach fleet server {self.base}: {exc}") from None
