"""A compiled checker for the JSON Schema subset ``edge_runtime/schemas`` uses, fast enough for ingest.

``jsonschema`` took about 1.3 ms per metric record here (keyword dispatch per node), which caps ingest near
700 records/s on one core; these closures take microseconds. The subset: type, required, properties, const, enum,
items, additionalProperties; annotations (title, description, $id, $schema) are ignored. Any other keyword raises
at compile time, so a schema change that needs more is noticed (the tests compare against ``jsonschema``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any, str], str | None]  # (value, path) -> first error or None

_ANNOTATIONS = {"$schema", "$id", "title", "description"}
_KNOWN = {"type", "required", "properties", "const", "enum", "items", "additionalProperties"} | _ANNOTATIONS
_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


class UnsupportedSchema(ValueError):
    """The schema uses a keyword this checker does not implement."""


def compile_schema(schema: dict[str, Any]) -> Check:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise UnsupportedSchema(f"unsupported JSON Schema keywords: {sorted(unknown)}")
    checks: list[Check] = []
    if "type" in schema:
        names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        tests = [_TYPES[n] for n in names]
        want = "/".join(names)
        if len(tests) == 1:
            one = tests[0]
            checks.append(lambda v, p: None if one(v) else f"{p}: expected {want}")
        else:
            checks.append(lambda v, p: None if any(t(v) for t in tests) else f"{p}: expected {want}")
    if "const" in schema:
        const = schema["const"]
        checks.append(lambda v, p: None if v == const and type(v) is type(const) else f"{p}: must be {const!r}")
    if "enum" in schema:
        allowed = schema["enum"]
        checks.append(lambda v, p: None if v in allowed else f"{p}: must be one of {allowed}")
    if "required" in schema:
        req = list(schema["required"])
        checks.append(lambda v, p: next((f"{p}: {k!r} is required" for k in req if k not in v), None)
                      if isinstance(v, dict) else None)
    if "properties" in schema or "additionalProperties" in schema:
        checks.append(_object_check(schema))
    if "items" in schema:
        item = compile_schema(schema["items"])

        def items(v: Any, p: str) -> str | None:
            if not isinstance(v, list):
                return None
            for i, x in enumerate(v):
                err = item(x, f"{p}/{i}")
                if err is not None:
                    return err
            return None

        checks.append(items)

    if len(checks) == 1:
        return checks[0]

    def check(v: Any, p: str) -> str | None:
        for c in checks:
            err = c(v, p)
            if err is not None:
                return err
        return None

    return check


def _object_check(schema: dict[str, Any]) -> Check:
    props = {k: compile_schema(s) for k, s in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties", True)
    extra_check = compile_schema(extra) if isinstance(extra, dict) else None

    def obj(v: Any, p: str) -> str | None:
        if not isinstance(v, dict):
            return None
        for k, x in v.items():
            c = props.get(k)
            if c is None:
                if extra is False:
                    return f"{p}: unexpected property {str(k)[:64]!r}"
                c = extra_check
            if c is not None:
                err = c(x, f"{p}/{k}")
                if err is not None:
                    return err
        return None

    return obj
