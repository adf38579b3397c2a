"""A compiled checker for the JSON Schema subset ``edge_runtime/schemas`` uses, fast enough for ingest.

``jsonschema`` took about 1.3 ms per metric record here (keyword dispatch per node), which caps ingest near
700 records/s on one core; these closures take microseconds. The subset: type, required, properties, const, enum,
items, additionalProperties, minimum, minItems, maxItems, allOf, if/then, and $ref to a ``$defs`` entry of the
same schema (``#/$defs/NAME``) or of a sibling schema (``../NAME/1#/$defs/NAME``, read through ``load``);
annotations (title, description, $id, $schema, $defs, contentEncoding) are ignored. Any other keyword raises
at compile time, so a schema change that needs more is noticed (the tests compare against ``jsonschema``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Check = Callable[[Any, str], str | None]  # (value, path) -> first error or None

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs", "contentEncoding"}
_KNOWN = {"type", "required", "properties", "const", "enum", "items", "additionalProperties", "$ref", "minimum",
          "minItems", "maxItems", "allOf", "if", "then"} | _ANNOTATIONS
Loader = Callable[[str], dict[str, Any]]  # sibling schema name (e.g. "metrics") -> the schema
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


def _resolve(ref: str, root: dict[str, Any], load: Loader | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the schema ``ref`` points at, the root it lives in)."""
    where, _, pointer = ref.partition("#")
    if where:
        parts = where.split("/")
        if load is None or len(parts) != 3 or parts[0] != "..":
            raise UnsupportedSchema(f"unsupported $ref {ref!r}")
        root = load(parts[1])
    if not pointer.startswith("/$defs/") or pointer.count("/") != 2:
        raise UnsupportedSchema(f"unsupported $ref {ref!r} (only #/$defs/NAME)")
    try:
        return root["$defs"][pointer.split("/")[2]], root
    except KeyError:
        raise UnsupportedSchema(f"$ref {ref!r} points at nothing") from None


def compile_schema(schema: dict[str, Any], root: dict[str, Any] | None = None, load: Loader | None = None,
                   depth: int = 0) -> Check:
    unknown = set(schema) - _KNOWN
    if unknown:
        raise UnsupportedSchema(f"unsupported JSON Schema keywords: {sorted(unknown)}")
    if depth > 32:
        raise UnsupportedSchema("schema nested too deep (a $ref cycle?)")
    root = schema if root is None else root

    def sub(s: dict[str, Any]) -> Check:
        return compile_schema(s, root, load, depth + 1)

    checks: list[Check] = []
    if "$ref" in schema:
        target, target_root = _resolve(schema["$ref"], root, load)
        checks.append(compile_schema(target, target_root, load, depth + 1))
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
        checks.append(_object_check(schema, sub))
    checks += _bounds(schema)
    checks += [sub(x) for x in schema.get("allOf", [])]
    if "if" in schema and "then" in schema:
        cond, then = sub(schema["if"]), sub(schema["then"])
        checks.append(lambda v, p: then(v, p) if cond(v, p) is None else None)
    if "items" in schema:
        item = sub(schema["items"])

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


def _bounds(schema: dict[str, Any]) -> list[Check]:
    out: list[Check] = []
    if "minimum" in schema:
        low = schema["minimum"]
        out.append(lambda v, p: f"{p}: below {low}" if _TYPES["number"](v) and v < low else None)
    if "minItems" in schema:
        n = schema["minItems"]
        out.append(lambda v, p: f"{p}: fewer than {n} items" if isinstance(v, list) and len(v) < n else None)
    if "maxItems" in schema:
        m = schema["maxItems"]
        out.append(lambda v, p: f"{p}: more than {m} items" if isinstance(v, list) and len(v) > m else None)
    return out


def _object_check(schema: dict[str, Any], sub: Callable[[dict[str, Any]], Check]) -> Check:
    props = {k: sub(s) for k, s in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties", True)
    extra_check = sub(extra) if isinstance(extra, dict) else None

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
