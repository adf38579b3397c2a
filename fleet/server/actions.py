"""Operator actions: signed, published to the broker, audited. The API and the dashboard both call these."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.package.signing import sign_bytes
from edge_runtime.sync.topics import Topics
from fleet.server.auth import User, audit
from fleet.server.errors import ActionRefused

COMMAND_SCHEMA = "command/1"


def signed_command(command: dict[str, Any], key: Ed25519PrivateKey) -> bytes:
    """The command with a ``signature`` over its canonical JSON (sorted keys, no spaces, without the field)."""
    text = json.dumps(command, sort_keys=True, separators=(",", ":"))
    return json.dumps({**command, "signature": json.loads(sign_bytes(key, text.encode()))}).encode()


class Actions:
    """What an operator may do; refused (and audited as refused) without an operator key or a broker."""

    def __init__(self, engine: Any, topics: Topics, key: Ed25519PrivateKey | None, publish: Any | None) -> None:
        self.engine, self.topics, self.key, self._publish = engine, topics, key, publish

    def request_samples(self, user: User, device: str, max_samples: int = 10) -> dict[str, Any]:
        """Ask ``device`` to upload up to ``max_samples`` of its kept samples (they arrive through ingest)."""
        target = f"device:{device}"
        try:
            if not user.is_operator:
                raise PermissionError("operator role required")
            if self.key is None:
                raise ActionRefused("the server has no operator key (fleet serve --operator-key): actions refused")
            if self._publish is None:
                raise ActionRefused("the server has no broker connection: actions refused")
            if not 1 <= max_samples <= 100:
                raise ActionRefused("max must be between 1 and 100")
            cmd = {"schema": COMMAND_SCHEMA, "command": "upload_samples", "device": device,
                   "request_id": secrets.token_hex(8), "max": max_samples, "issued": time.time(),
                   "issued_by": user.name}
            self._publish(self.topics.commands(device), signed_command(cmd, self.key), 1)
        except (PermissionError, ActionRefused, ValueError) as exc:
            audit(self.engine, user.name, "request_samples", target, "refused", {"reason": str(exc)})
            raise
        audit(self.engine, user.name, "request_samples", target, "done",
              {"request_id": cmd["request_id"], "max": max_samples})
        return {"request_id": cmd["request_id"], "device": device, "max": max_samples}
