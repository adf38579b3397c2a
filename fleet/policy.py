"""`edge-runtime fleet policy set [--group G] FILE`: sign a collection policy and publish it retained.

The CLI (straight to the broker, like `fleet command`) and the fleet server's API (fleet/server/actions.py)
both publish through :func:`publish_policy`; devices verify the signature with their operator keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.errors import ConfigError, validation_message
from edge_runtime.fsutil import read_yaml
from edge_runtime.monitoring.collect import CollectionPolicy, PolicyDocument, scope_topic, sign_policy


def load_policy(path: Path) -> CollectionPolicy:
    """A policy file (YAML or JSON), validated; ConfigError with one line otherwise."""
    data = read_yaml(path, "collection policy")
    try:
        return CollectionPolicy.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise ConfigError(f"invalid collection policy {path}: {validation_message(exc, root='policy')}") from None


def scope_of(group: str | None) -> str:
    if group is None:
        return "fleet"
    from edge_runtime.sync.topics import check_segment

    try:
        return f"group:{check_segment(group, 'group')}"
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def publish_policy(link: Any, topics: Any, scope: str, policy: CollectionPolicy, key: Any,
                   timeout: float = 10.0) -> PolicyDocument:
    """Sign ``policy`` for ``scope`` and publish it retained; ConfigError when the broker does not take it."""
    doc, envelope = sign_policy(scope, policy, key)
    handle = link.publish(scope_topic(topics, scope), envelope, qos=1, retain=True)
    if not handle.wait(timeout):
        raise ConfigError(f"the broker did not take the policy for {scope}: {getattr(handle, 'error', None)}")
    return doc
