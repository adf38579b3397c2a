"""Content-addressed dataset snapshots: the exact samples and labels a run trains on, written as ``train.npz``.

The id is the sha256 of a canonical JSON of every (device, sample id, content sha256, label, origin, split) plus
the parent's training data reference (path and sha256), so the same data always gives the same id. ``x`` in
``train.npz`` holds the model's float inputs made by the parent package's own preprocessing (the device's), ``y``
class indices in the parent's label order; the base data's rows come first (``snapshot.json`` beside it says how
many, and the snapshot id, classes and label origins).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import insert, select

from edge_runtime.imageheader import ImageHeaderError, image_size
from edge_runtime.quant import dequantize
from fleet.retrain import RetrainError
from fleet.retrain import labels as lab
from fleet.server.db import tables as t

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}
MAX_PIXELS = 4096 * 4096  # a sample declaring more is skipped before it is decoded


@dataclass(frozen=True)
class Snapshot:
    id: str
    train: list[dict[str, Any]]
    field: list[dict[str, Any]]
    base: dict[str, Any] | None
    counts: dict[str, Any]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _split(device: str, sid: str, share: float) -> str:
    h = int(hashlib.sha256(f"{device}/{sid}".encode()).hexdigest()[:8], 16)
    return "field" if h % 10_000 < share * 10_000 else "train"


def select_samples(engine: Any, model: str, classes: tuple[str, ...], field_share: float, include_teacher: bool,
                   base: Path | None) -> Snapshot:
    """Every sample labelled with one of ``classes``, split train/field by its id (the same sample, the same side)."""
    with engine.connect() as conn:
        eff = lab.effective(conn, include_teacher)
        rows = {(r.device, r.sample_id): r for r in conn.execute(select(t.samples.c.device, t.samples.c.sample_id,
                                                                        t.samples.c.sha256, t.samples.c.ext))}
    entries, skipped = [], 0
    for (dev, sid), lrow in sorted(eff.items()):
        r = rows.get((dev, sid))
        if r is None or lrow["label"] not in classes:
            skipped += r is not None
            continue
        entries.append({"device": dev, "sample_id": sid, "sha256": r.sha256, "ext": r.ext, "label": lrow["label"],
                        "origin": lrow["origin"], "confidence": lrow["confidence"],
                        "split": _split(dev, sid, field_share)})
    base_ref = None if base is None else {"path": str(base), "sha256": file_sha256(base)}
    canon = json.dumps({"model": model, "classes": list(classes), "base": base_ref and base_ref["sha256"],
                        "samples": [[e["device"], e["sample_id"], e["sha256"], e["label"], e["origin"], e["split"]]
                                    for e in entries]}, separators=(",", ":"), sort_keys=True)
    sid = hashlib.sha256(canon.encode()).hexdigest()
    train = [e for e in entries if e["split"] == "train"]
    field = [e for e in entries if e["split"] == "field"]
    origins: dict[str, int] = {}
    for e in entries:
        origins[e["origin"]] = origins.get(e["origin"], 0) + 1
    counts = {"train": len(train), "field": len(field), "origins": origins, "other_classes": int(skipped)}
    return Snapshot(sid, train, field, base_ref, counts)


def persist(engine: Any, model: str, snap: Snapshot) -> None:
    with engine.begin() as conn:
        if conn.execute(select(t.dataset_snapshots.c.id).where(t.dataset_snapshots.c.id == snap.id)).first():
            return
        conn.execute(insert(t.dataset_snapshots).values(
            id=snap.id, model=model, created=time.time(), base=snap.base, counts=snap.counts,
            samples=[[e["device"], e["sample_id"], e["label"], e["origin"], e["split"]]
                     for e in snap.train + snap.field]))


def read_image(path: Path) -> np.ndarray | None:
    """A stored sample as a BGR (or gray) frame; None when it is unreadable or declares too many pixels."""
    import cv2

    try:
        data = path.read_bytes()
    except OSError:
        return None
    if path.suffix == ".npy":
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError:
            return None
    try:
        if image_size(data).pixels > MAX_PIXELS:
            return None
    except ImageHeaderError:
        return None
    frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return frame


def float_input(model: Any, frame: np.ndarray) -> np.ndarray:
    """The parent's preprocessing of ``frame``, as float (a quantized input is dequantized), batch axis dropped."""
    x = model.prepare(frame).tensors[0]
    q = model.manifest.inputs[0].quantization
    return (dequantize(x, q) if q is not None else x.astype(np.float32))[0]


def write_train(out: Path, model: Any, classes: tuple[str, ...], snap: Snapshot, sample_dir: Path) -> dict[str, int]:
    """``out/train.npz``: base rows then the snapshot's train split through the parent's preprocessing."""
    from edge_runtime.fsutil import atomic_write_bytes

    xs, ys, base_rows = [], [], 0
    if snap.base is not None:
        with np.load(snap.base["path"], allow_pickle=False) as z:
            if "x" not in z.files or "y" not in z.files:
                raise RetrainError(f"base data {snap.base['path']}: needs arrays x and y")
            xs.append(np.asarray(z["x"], np.float32))
            ys.append(np.asarray(z["y"], np.int64))
            base_rows = len(ys[0])
    unreadable, new = 0, 0
    for e in snap.train:
        frame = read_image(sample_dir / e["sha256"][:2] / f"{e['sha256']}.{e['ext']}")
        if frame is None:
            unreadable += 1
            continue
        xs.append(float_input(model, frame)[None])
        ys.append(np.array([classes.index(e["label"])], np.int64))
        new += 1
    if not xs:
        raise RetrainError("the snapshot has no training data (no base data and no labelled samples)")
    x, y = np.concatenate(xs), np.concatenate(ys)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "train.npz", buf.getvalue())
    doc = {"snapshot": snap.id, "classes": list(classes), "base_rows": base_rows, "new_rows": new,
           "origins": snap.counts["origins"]}
    atomic_write_bytes(out / "snapshot.json", json.dumps(doc, indent=1).encode())
    return {"rows": int(len(y)), "new": new, "unreadable": unreadable}
