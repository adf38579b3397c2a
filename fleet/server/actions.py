"""Operator actions: signed, published to the broker, audited. The API and the dashboard both call these."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.monitoring.collect import CollectionPolicy
from edge_runtime.sync.commands import new_command, sign_command
from edge_runtime.sync.topics import Topics
from fleet.server.auth import User, audit
from fleet.server.errors import ActionRefused

COMMAND_TTL_S = 300.0  # a command not acted on in five minutes is refused by the device


class PahoLink:
    """``fleet.publish``'s link interface over the ingest's paho client: publish returns a handle with wait()."""

    class _Handle:
        def __init__(self, info: Any) -> None:
            self.info, self.error = info, None

        def wait(self, timeout: float) -> bool:
            try:
                self.info.wait_for_publish(timeout)
            except (RuntimeError, ValueError) as exc:  # not connected / queue full
                self.error = str(exc)
                return False
            return bool(self.info.is_published())

    def __init__(self, client: Any) -> None:
        self.client = client

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Any:
        return self._Handle(self.client.publish(topic, payload, qos=qos, retain=retain))


class Actions:
    """What an operator may do; refused (and audited as refused) without an operator key or a broker."""

    def __init__(self, engine: Any, topics: Topics, key: Ed25519PrivateKey | None, publish: Any | None,
                 link: Any | None = None, public_url: str | None = None) -> None:
        self.engine, self.topics, self.key, self._publish, self.link = engine, topics, key, publish, link
        self.public_url = public_url.rstrip("/") if public_url else None

    def package_url(self, sha256: str) -> str | None:
        """Where devices download a package over HTTP(S) (None: the server has no public URL, MQTT only)."""
        return f"{self.public_url}/api/v1/packages/{sha256}" if self.public_url else None

    def signing_link(self) -> tuple[Any, Ed25519PrivateKey]:
        """The broker link and operator key that signed publications need, or ActionRefused saying which is missing."""
        if self.key is None:
            raise ActionRefused("the server has no operator key (fleet serve --operator-key): actions refused")
        if self.link is None:
            raise ActionRefused("the server has no broker connection: actions refused")
        return self.link, self.key

    def set_policy(self, user: User, scope: str, policy: CollectionPolicy) -> dict[str, Any]:
        """Sign ``policy`` for ``scope`` (fleet or group:NAME) and publish it retained; audited."""
        from fleet.policy import publish_policy

        try:
            if not user.is_operator:
                raise PermissionError("operator role required")
            link, key = self.signing_link()
            try:
                doc = publish_policy(link, self.topics, scope, policy, key)
            except EdgeRuntimeError as exc:
                raise ActionRefused(str(exc)) from None
        except (PermissionError, ActionRefused) as exc:
            audit(self.engine, user.name, "set_policy", scope, "refused", {"reason": str(exc)})
            raise
        audit(self.engine, user.name, "set_policy", scope, "done",
              {"sequence": doc.sequence, "policy": policy.model_dump(mode="json")})
        return {"scope": scope, "sequence": doc.sequence, "upload": policy.upload}

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
            cmd = new_command(device, "upload_samples", COMMAND_TTL_S, max=max_samples)
            self._publish(self.topics.commands(device), sign_command(cmd, self.key), 1)
        except (PermissionError, ActionRefused) as exc:
            audit(self.engine, user.name, "request_samples", target, "refused", {"reason": str(exc)})
            raise
        audit(self.engine, user.name, "request_samples", target, "done",
              {"request_id": cmd.request_id, "sequence": cmd.sequence, "max": max_samples})
        return {"request_id": cmd.request_id, "device": device, "max": max_samples}
