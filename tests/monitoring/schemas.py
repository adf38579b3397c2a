"""Validate payloads with jsonschema against edge_runtime/schemas/ (the files the producers promise).

All schema files are loaded into one registry, so a schema may refer to another by its ``$id``
(event/1 uses metrics/1's reference definition)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "edge_runtime" / "schemas"


@cache
def _registry() -> Registry:
    docs = [json.loads(p.read_text()) for p in sorted(SCHEMAS.glob("*.json"))]
    return Registry().with_resources((d["$id"], Resource.from_contents(d)) for d in docs)


@cache
def _validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, registry=_registry())


def validate(doc: Any, name: str) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` conforms to ``edge_runtime/schemas/<name>``."""
    _validator(name).validate(doc)


def validate_batch(batch: dict[str, Any]) -> None:
    """A batch/1 message and each record in it (metrics/1 or event/1, by the batch's kind)."""
    validate(batch, "batch.json")
    inner = "metrics.json" if batch["kind"] == "metrics" else "event.json"
    for record in batch["records"]:
        validate(record["data"], inner)
