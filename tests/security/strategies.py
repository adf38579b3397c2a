"""Hypothesis strategies for hostile input: any JSON, valid documents with one field made hostile, deep nesting,
huge and non-finite numbers, wrong types, invalid UTF-8, over-long strings."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# Values a hostile sender puts where a field belongs. JSON has no NaN/Infinity, but Python's reader takes them.
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**30, max_value=10**60), st.floats(),
    st.text(max_size=40), st.sampled_from(["", "0", "-1", "1e999", "NaN", "../../etc/passwd", "\x00", "é" * 50]),
)  # fmt: skip
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                                        max_size=5), max_leaves=20)


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def deep_nesting(draw: st.DrawFn) -> bytes:
    """Brackets or objects nested past any recursion limit (closed or not)."""
    depth = draw(st.sampled_from([1_000, 5_000, 60_000, 100_000]))
    opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}"), (b'{"document":', b"}")]))
    closed = draw(st.booleans())
    return opener * depth + (b"1" + closer * depth if closed else b"")


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    """``valid`` with one key replaced by a hostile value, deleted, or one added."""
    doc = dict(valid)
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    key = draw(st.sampled_from(sorted(doc)))
    if action == "replace":
        doc[key] = draw(JSON)
    elif action == "delete":
        del doc[key]
    else:
        doc[draw(st.text(min_size=1, max_size=10))] = draw(JSON)
    return dumps(doc)


def hostile_json(valid: dict[str, Any] | None = None) -> st.SearchStrategy[bytes]:
    """Bytes for a parser of JSON documents: raw bytes, any JSON, deep nesting, and mutations of ``valid``."""
    options = [st.binary(max_size=200), JSON.map(dumps), deep_nesting(),
               st.sampled_from([b"", b"null", b"[]", b"{}", b"NaN", b"1e99999", b"\xff\xfe", b'{"a": 1, "a": 2}',
                                b"9" * 5000, b'"' + b"x" * 100_000 + b'"'])]  # fmt: skip
    if valid is not None:
        options.append(mutated(valid))
    return st.one_of(*options)
