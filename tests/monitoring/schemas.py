"""Validate payloads with jsonschema against edge_runtime/schemas/ (the files the producers promise)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

SCHEMAS = Path(__file__).resolve().parents[2] / "edge_runtime" / "schemas"


@cache
def _validator(name: str) -> Any:
    schema = json.loads((SCHEMAS / name).read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def validate(doc: Any, name: str) -> None:
    """Raise jsonschema.ValidationError unless ``doc`` conforms to ``edge_runtime/schemas/<name>``."""
    _validator(name).validate(doc)


def validate_batch(batch: dict[str, Any]) -> None:
    """A batch/1 message and each record in it (metrics/1 or event/1, by the batch's kind)."""
    validate(batch, "batch.json")
    inner = "metrics.json" if batch["kind"] == "metrics" else "event.json"
    for record in batch["records"]:
        validate(record["data"], inner)
