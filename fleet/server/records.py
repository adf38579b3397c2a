"""From an MQTT message to database rows: validate against ``edge_runtime/schemas`` and pull out the figures.

Pure functions, no I/O: :func:`parse` turns one message into a :class:`Parsed` (rows per table, plus what was
refused and why). A refused payload never raises; a refused record inside a good batch refuses only itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import orjson

from edge_runtime.sync.topics import check_segment
from fleet.server.schema_check import compile_schema

MAX_PAYLOAD = 16 << 20  # larger messages are refused before parsing (the broker's limit is usually far lower)
MAX_SAMPLE_BYTES = 8 << 20  # decoded sample content


@cache
def _schema(name: str) -> Any:
    return json.loads(resources.files("edge_runtime.schemas").joinpath(f"{name}.json").read_text())


@cache
def _checker(name: str) -> Any:
    return compile_schema(_schema(name), load=_schema)


def schema_error(name: str, doc: Any) -> str | None:
    """The first validation error of ``doc`` against schema ``name`` (one short line), or None."""
    err = _checker(name)(doc, "document")
    return None if err is None else f"{name}: {err[:300]}"


@dataclass
class Parsed:
    """What one message becomes: rows per table name, the device it speaks for, and refusals."""

    device: str | None = None
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    device_update: dict[str, Any] = field(default_factory=dict)  # columns of the devices row to set
    rejected: list[str] = field(default_factory=list)  # reasons (a whole payload or single records)
    sample_blob: bytes | None = None  # content of an uploaded sample, stored under its sha256
    records: int = 0  # records this message carried (stored + duplicates + refused)

    def add(self, table: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)


def _loads(payload: bytes) -> Any:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        return orjson.loads(payload)  # about 3x json.loads; refuses NaN/Infinity and nesting past 1024 levels
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from None


def kind_of(topic: str, prefix: str) -> tuple[str, str] | None:
    """(device, kind) of a device topic under ``prefix``, kind one of metrics/events/samples/state/update/desired."""
    head = f"{prefix}/devices/"
    if not topic.startswith(head):
        return None
    rest = topic[len(head):].split("/")
    kinds = {("metrics",): "metrics", ("events",): "events", ("samples",): "samples", ("state",): "state",
             ("update", "status"): "update", ("desired",): "desired"}
    kind = kinds.get(tuple(rest[1:]))
    if kind is None:
        return None
    try:
        return check_segment(rest[0], "device id"), kind
    except ValueError:
        return None


def parse(topic: str, payload: bytes, prefix: str = "edge", now: float | None = None) -> Parsed:
    """Rows for one message. Never raises for bad input: refusals are listed in ``Parsed.rejected``."""
    now = time.time() if now is None else now
    out = Parsed()
    where = kind_of(topic, prefix)
    if where is None:
        out.rejected.append(f"unexpected topic {topic[:200]!r}")
        return out
    out.device, kind = where
    if kind == "desired" and not payload:  # its own document cleared: it follows its groups' documents again
        out.device_update.update(desired_version=None, desired_sequence=None, desired_scope=None)
        return out
    if kind in ("state", "update") and not payload:
        return out  # a cleared retained topic
    try:
        doc = _loads(payload)
    except ValueError as exc:
        out.rejected.append(f"not JSON: {str(exc)[:200]}")
        return out
    if not isinstance(doc, dict):
        out.rejected.append("payload is not a JSON object")
        return out
    handler = {"metrics": _batch, "events": _batch, "samples": _sample, "state": _state, "update": _update,
               "desired": _desired}[kind]
    handler(out, doc, now)
    if kind in ("metrics", "events", "samples") and out.rows:
        out.device_update["last_seen"] = now
    return out


def _batch(out: Parsed, doc: dict[str, Any], now: float) -> None:
    err = schema_error("batch", doc)
    if err is None and doc["device"] != out.device:
        err = f"batch names device {str(doc['device'])[:128]!r} on the topic of {out.device!r}"
    if err is not None:
        out.rejected.append(err)
        return
    name, table = ("metrics", "metrics") if doc["kind"] == "metrics" else ("event", "events")
    for rec in doc["records"]:
        out.records += 1
        data = rec["data"]
        bad = schema_error(name, data)
        if bad is None and data.get("device") != out.device:
            bad = f"record names device {str(data.get('device'))[:128]!r}"
        if bad is not None:
            out.rejected.append(f"record {rec['id']}: {bad}")
            continue
        key = {"device": out.device, "outbox": str(doc["outbox"])[:64], "record_id": int(rec["id"]),
               "ts": float(data["ts"]), "received": now, "model": str(data["model"])[:128],
               "version": str(data["version"])[:64], "data": data}
        if table == "metrics":
            out.add(table, {**key, **metric_figures(data)})
        else:
            out.add(table, {**key, "type": str(data["type"])[:64], "feature": _str(data.get("feature"), 128)})
            if data["type"] in ("drift", "drift_cleared"):
                out.device_update["drifting"] = data["type"] == "drift"
                out.device_update["drift_at"] = float(data["ts"])
        out.device_update.update(model=key["model"], version=key["version"])


def _str(v: Any, n: int) -> str | None:
    return None if v is None else str(v)[:n]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _get(doc: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(p)
    return doc


def metric_figures(data: dict[str, Any]) -> dict[str, Any]:
    """The columns the dashboard charts and rollups use, taken from a metrics/1 record."""
    hist = _get(data, "quality", "confidence_histogram")
    conf = None
    if isinstance(hist, list) and hist and all(isinstance(c, int) for c in hist) and sum(hist) > 0:
        conf = sum((i + 0.5) / len(hist) * c for i, c in enumerate(hist)) / sum(hist)
    drift = data.get("drift")
    features = drift.get("features") if isinstance(drift, dict) else None  # metrics/1: score d in sigmas
    scores = [_num(_get(s, "d")) for s in features.values()] if isinstance(features, dict) else []
    temps = _get(data, "system", "temperature_c")
    temp = max((t for t in (_num(v) for v in temps.values()) if t is not None), default=None) \
        if isinstance(temps, dict) else _num(temps)
    rss = _num(_get(data, "system", "rss_bytes"))
    return {
        "frames": int(data["frames"]), "fps": _num(data["fps"]),
        "latency_p50": _num(_get(data, "latency_ms", "end_to_end", "p50")),
        "latency_p90": _num(_get(data, "latency_ms", "end_to_end", "p90")),
        "latency_p99": _num(_get(data, "latency_ms", "end_to_end", "p99")),
        "inference_p50": _num(_get(data, "latency_ms", "inference", "p50")),
        "dropped": _int(_get(data, "pipeline", "dropped")), "errors": _int(_get(data, "pipeline", "errors")),
        "cpu_percent": _num(_get(data, "system", "cpu_percent")), "rss_bytes": None if rss is None else int(rss),
        "temperature_c": temp, "confidence_mean": conf,
        "drift_max": max((s for s in scores if s is not None), default=None),
    }


def _int(v: Any) -> int | None:
    n = _num(v)
    return None if n is None else int(n)


def _sample(out: Parsed, doc: dict[str, Any], now: float) -> None:
    meta = doc.get("sample")
    if doc.get("schema") != "sample/1" or doc.get("device") != out.device or not isinstance(meta, dict) \
            or not isinstance(meta.get("id"), str) or not isinstance(doc.get("data_b64"), str):
        out.rejected.append("sample: expected sample/1 with device, sample.id and data_b64")
        return
    try:
        check_segment(meta["id"], "sample id")
        if len(doc["data_b64"]) > MAX_SAMPLE_BYTES * 4 // 3 + 4:
            raise ValueError(f"sample over {MAX_SAMPLE_BYTES} bytes")
        blob = base64.b64decode(doc["data_b64"], validate=True)
    except (ValueError, binascii.Error) as exc:
        out.rejected.append(f"sample: {str(exc)[:200]}")
        return
    out.records = 1
    ext = sample_ext(meta.get("file"))
    out.sample_blob = blob
    out.add("samples", {"device": out.device, "sample_id": meta["id"], "ts": _num(meta.get("ts")), "received": now,
                        "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob), "ext": ext,
                        "reason": _str(meta.get("reason"), 64), "confidence": _num(meta.get("confidence")),
                        "meta": meta})


def sample_ext(file: Any) -> str:
    """The stored file's extension from a device's file name: ASCII letters and digits only (it becomes part of a
    path in the sample store: no NUL, slash or other character that breaks or shapes a path), else ``bin``."""
    ext = str(file or "").rpartition(".")[2][:8]
    return ext if ext.isascii() and ext.isalnum() else "bin"


def _state(out: Parsed, doc: dict[str, Any], now: float) -> None:
    err = schema_error("state", doc)
    if err is not None:
        out.rejected.append(err)
        return
    upd: dict[str, Any] = {"online": bool(doc["online"]), "state": doc, "last_seen": _num(doc["ts"]) or now}
    model = doc.get("model")
    if isinstance(model, str) and model:
        upd["serving"] = model[:200]
    if isinstance(doc.get("update"), str):
        upd["update_state"] = doc["update"][:32]
    out.device_update.update(upd)


def _update(out: Parsed, doc: dict[str, Any], now: float) -> None:
    if not str(doc.get("schema", "")).startswith("update-status/") or not isinstance(doc.get("state"), str):
        out.rejected.append("update status: expected update-status/N with a state")
        return
    at = _num(doc.get("at")) or now
    groups = doc.get("groups")
    out.add("update_history", {"device": out.device, "at": at, "state": doc["state"][:32],
                               "sequence": _int(doc.get("sequence")), "serving": _str(doc.get("serving"), 200),
                               "target_version": _str(doc.get("target_version"), 64),
                               "reason": _str(doc.get("reason"), 2000), "code": _str(doc.get("code"), 64),
                               "data": doc})
    out.device_update.update(update_state=doc["state"][:32], update_reason=_str(doc.get("reason"), 2000),
                             update_at=at, serving=_str(doc.get("serving"), 200),
                             profile=_str(doc.get("profile"), 128),
                             groups=[str(g)[:128] for g in groups][:50] if isinstance(groups, list) else None)


def _desired(out: Parsed, doc: dict[str, Any], now: float) -> None:
    try:
        inner = json.loads(doc["document"]) if isinstance(doc.get("document"), str) else None
    except (ValueError, RecursionError):
        inner = None
    if not isinstance(inner, dict):
        out.rejected.append("desired: expected a signed envelope with a document")
        return
    out.device_update.update(desired_version=_str(inner.get("version"), 64),
                             desired_sequence=_int(inner.get("sequence")), desired_scope="device")
