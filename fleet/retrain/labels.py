"""Sample labels: set by a person, imported (class folders, CSV, COCO, YOLO) or proposed by a teacher model.

Each origin keeps its own row per sample; the label a snapshot trains on is the first of person, import, teacher
(teacher labels only when the policy allows them), and the snapshot records which origin each label came from.
``samples.label`` mirrors that effective label so the existing sample views show it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import and_, delete, desc, func, insert, or_, select, update

from edge_runtime.fsutil import atomic_write_bytes
from fleet.retrain import RetrainError
from fleet.server.auth import User, audit
from fleet.server.db import tables as t

ORIGINS = ("person", "import", "teacher")  # precedence, first wins
IMPORT_DEVICE = "import"  # samples that came from an import, not from a device
IMAGE_EXT = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".bmp": "bmp"}
MAX_IMPORT = 100_000
MAX_LABEL = 128


@dataclass(frozen=True)
class Label:
    device: str
    sample_id: str
    label: str
    boxes: list[list[float]] | None = None
    confidence: float | None = None


def _check(items: list[Label]) -> None:
    if len(items) > MAX_IMPORT:
        raise RetrainError(f"at most {MAX_IMPORT} labels at once")
    for it in items:
        if not it.label or len(it.label) > MAX_LABEL:
            raise RetrainError(f"sample {it.device}/{it.sample_id}: a label is 1 to {MAX_LABEL} characters")


def set_labels(engine: Any, user: User, items: list[Label], origin: str, by: str | None = None) -> dict[str, int]:
    """Store ``items`` under ``origin`` (replacing that origin's earlier label); unknown samples are refused."""
    if origin not in ORIGINS:
        raise RetrainError(f"unknown label origin {origin!r}: one of {', '.join(ORIGINS)}")
    if not user.is_operator:
        raise PermissionError("operator role required")
    _check(items)
    now, by = time.time(), (by or user.name)[:64]
    with engine.begin() as conn:
        keys = {(i.device, i.sample_id) for i in items}
        known = _known(conn, keys)
        missing = sorted(keys - known)
        if missing:
            raise RetrainError(f"{len(missing)} unknown samples, e.g. {missing[0][0]}/{missing[0][1]}")
        sl = t.sample_labels
        for it in items:
            conn.execute(delete(sl).where(sl.c.device == it.device, sl.c.sample_id == it.sample_id,
                                          sl.c.origin == origin))
        if items:
            conn.execute(insert(sl), [{"device": i.device, "sample_id": i.sample_id, "origin": origin,
                                       "label": i.label, "confidence": i.confidence, "boxes": i.boxes, "by": by,
                                       "at": now} for i in items])
        _mirror(conn, keys)
    audit(engine, user.name, f"label_{origin}", None, "done", {"samples": len(items)})
    return {"labelled": len(items)}


def _known(conn: Any, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    by_dev: dict[str, list[str]] = {}
    for d, s in keys:
        by_dev.setdefault(d, []).append(s)
    for dev, ids in by_dev.items():
        for i in range(0, len(ids), 500):
            q = select(t.samples.c.sample_id).where(t.samples.c.device == dev,
                                                    t.samples.c.sample_id.in_(ids[i:i + 500]))
            out.update((dev, r.sample_id) for r in conn.execute(q))
    return out


def _mirror(conn: Any, keys: set[tuple[str, str]]) -> None:
    eff = effective(conn, include_teacher=True, keys=keys)
    for dev, sid in keys:
        lab = eff.get((dev, sid))
        conn.execute(update(t.samples).where(t.samples.c.device == dev, t.samples.c.sample_id == sid)
                     .values(label=None if lab is None else lab["label"]))


def effective(conn: Any, include_teacher: bool, keys: set[tuple[str, str]] | None = None,
              since: float | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """(device, sample_id) -> the winning label row as a dict (person over import over teacher)."""
    sl = t.sample_labels
    q = select(sl)
    if not include_teacher:
        q = q.where(sl.c.origin != "teacher")
    if keys is not None and len(keys) <= 500:  # a few samples: ask for theirs only
        if not keys:
            return {}
        q = q.where(or_(*(and_(sl.c.device == d, sl.c.sample_id == i) for d, i in keys)))
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in conn.execute(q):
        k = (r.device, r.sample_id)
        if keys is not None and k not in keys:
            continue
        cur = out.get(k)
        if cur is None or ORIGINS.index(r.origin) < ORIGINS.index(cur["origin"]):
            out[k] = dict(r._mapping)
    if since is not None:
        out = {k: v for k, v in out.items() if v["at"] >= since}
    return out


def labelled_since(conn: Any, since: float, include_teacher: bool) -> int:
    sl = t.sample_labels
    q = select(func.count(func.distinct(sl.c.device + "/" + sl.c.sample_id))).where(sl.c.at >= since)
    if not include_teacher:
        q = q.where(sl.c.origin != "teacher")
    return int(conn.execute(q).scalar_one())


def review(conn: Any, *, unlabelled_only: bool = False, limit: int = 50, offset: int = 0) -> dict[str, Any]:
    """Samples newest first with every origin's label: what the review page and GET /labels show."""
    s = t.samples.c
    where = and_(True, s.label.is_(None)) if unlabelled_only else and_(True)
    total = int(conn.execute(select(func.count()).select_from(t.samples).where(where)).scalar_one())
    rows = conn.execute(select(s.device, s.sample_id, s.received, s.reason, s.confidence, s.label)
                        .where(where).order_by(desc(s.received), s.sample_id).limit(limit).offset(offset)).all()
    sl = t.sample_labels.c
    per: dict[tuple[str, str], dict[str, Any]] = {}
    if rows:  # only this page's labels (a page is at most a few hundred samples)
        match = or_(*(and_(sl.device == r.device, sl.sample_id == r.sample_id) for r in rows))
        for r in conn.execute(select(t.sample_labels).where(match)):
            per.setdefault((r.device, r.sample_id), {})[r.origin] = {
                "label": r.label, "confidence": r.confidence, "by": r.by, "at": r.at, "boxes": r.boxes}
    items = []
    for r in rows:
        labels = per.get((r.device, r.sample_id), {})
        origin = next((o for o in ORIGINS if o in labels), None)
        items.append({**dict(r._mapping), "labels": labels, "origin": origin})
    return {"total": total, "limit": limit, "offset": offset, "items": items}


# ------------------------------------------------------------------------------------------------ imports
def _store_file(conn: Any, sample_dir: Path, path: Path, meta: dict[str, Any]) -> tuple[str, str]:
    """Keep an imported image in the sample store (content-addressed) as a sample of device ``import``."""
    ext = IMAGE_EXT.get(path.suffix.lower())
    if ext is None:
        raise RetrainError(f"{path}: not an image ({', '.join(IMAGE_EXT)})")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RetrainError(f"cannot read {path}: {exc}") from None
    sha = hashlib.sha256(data).hexdigest()
    dest = sample_dir / sha[:2] / f"{sha}.{ext}"
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, data)
    sid = sha[:32]
    if conn.execute(select(t.samples.c.sample_id).where(t.samples.c.device == IMPORT_DEVICE,
                                                        t.samples.c.sample_id == sid)).first() is None:
        conn.execute(insert(t.samples).values(device=IMPORT_DEVICE, sample_id=sid, ts=None, received=time.time(),
                                              sha256=sha, bytes=len(data), ext=ext, reason="import",
                                              confidence=None, label=None, meta={"file": path.name, **meta}))
    return IMPORT_DEVICE, sid


def _files(engine: Any, sample_dir: Path, pairs: Iterable[tuple[Path, str, list[list[float]] | None]]) -> list[Label]:
    out = []
    with engine.begin() as conn:
        for path, label, boxes in pairs:
            dev, sid = _store_file(conn, sample_dir, path, {"imported_label": label})
            out.append(Label(dev, sid, label, boxes))
            if len(out) > MAX_IMPORT:
                raise RetrainError(f"at most {MAX_IMPORT} labels at once")
    return out


def from_folders(engine: Any, sample_dir: Path, root: Path) -> list[Label]:
    """A folder per class: ``root/CLASS/*.png``."""
    if not root.is_dir():
        raise RetrainError(f"{root}: not a folder (a folder per class of images)")
    pairs = [(f, c.name, None) for c in sorted(root.iterdir()) if c.is_dir()
             for f in sorted(c.iterdir()) if f.suffix.lower() in IMAGE_EXT]
    if not pairs:
        raise RetrainError(f"{root}: no class folders with images")
    return _files(engine, sample_dir, pairs)


def from_csv(engine: Any, sample_dir: Path, path: Path) -> list[Label]:
    """``sample_id,label`` (``DEVICE/SAMPLE`` for device samples) or ``path,label`` (images beside the CSV)."""
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RetrainError(f"cannot read {path}: {exc}") from None
    if not rows:
        return []
    cols = set(rows[0])
    if "label" not in cols or not ({"sample_id", "path"} & cols):
        raise RetrainError(f"{path}: the header must be sample_id,label or path,label")
    if "path" in cols:
        return _files(engine, sample_dir, [(path.parent / r["path"], r["label"], None) for r in rows])
    out = []
    for r in rows:
        dev, _, sid = r["sample_id"].rpartition("/")
        if not dev:
            raise RetrainError(f"{path}: sample_id {r['sample_id']!r} must be DEVICE/SAMPLE_ID")
        out.append(Label(dev, sid, r["label"]))
    return out


def from_coco(engine: Any, sample_dir: Path, path: Path) -> list[Label]:
    """COCO detection JSON: boxes kept normalised as [class, x0, y0, x1, y1]; the label is the commonest class."""
    try:
        doc = json.loads(path.read_text())
        cats = {c["id"]: str(c["name"]) for c in doc["categories"]}
        images = {i["id"]: i for i in doc["images"]}
        boxes: dict[Any, list[list[Any]]] = {}
        for a in doc["annotations"]:
            im = images[a["image_id"]]
            x, y, w, h = (float(v) for v in a["bbox"])
            W, H = float(im["width"]), float(im["height"])  # noqa: N806
            boxes.setdefault(a["image_id"], []).append([cats[a["category_id"]], x / W, y / H, (x + w) / W,
                                                        (y + h) / H])
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise RetrainError(f"{path}: not a COCO detection file ({exc})") from None
    pairs = []
    for iid, bs in boxes.items():
        names = [b[0] for b in bs]
        pairs.append((path.parent / images[iid]["file_name"], max(set(names), key=names.count), bs))
    return _files(engine, sample_dir, pairs)


def from_yolo(engine: Any, sample_dir: Path, root: Path) -> list[Label]:
    """YOLO text labels: ``images/*.png`` with ``labels/*.txt`` (or side by side) and ``classes.txt``."""
    classes_file = next((p for p in (root / "classes.txt", root / "obj.names") if p.is_file()), None)
    if classes_file is None:
        raise RetrainError(f"{root}: no classes.txt (one class name a line)")
    names = [n.strip() for n in classes_file.read_text().splitlines() if n.strip()]
    img_dir = root / "images" if (root / "images").is_dir() else root
    lab_dir = root / "labels" if (root / "labels").is_dir() else root
    pairs = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXT):
        txt = lab_dir / f"{img.stem}.txt"
        if not txt.is_file():
            continue
        bs = []
        for n, line in enumerate(txt.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                c, cx, cy, w, h = int(parts[0]), *(float(v) for v in parts[1:5])
                name = names[c]
            except (ValueError, IndexError):
                raise RetrainError(f"{txt}:{n}: expected 'class cx cy w h' with a class in classes.txt") from None
            bs.append([name, cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        if bs:
            labs = [b[0] for b in bs]
            pairs.append((img, max(set(labs), key=labs.count), bs))
    return _files(engine, sample_dir, pairs)


IMPORTERS = {"folders": from_folders, "csv": from_csv, "coco": from_coco, "yolo": from_yolo}


def import_labels(engine: Any, sample_dir: Path, user: User, fmt: str, path: Path) -> dict[str, int]:
    """Import labels from a file or folder on the server (operator); their origin is ``import``."""
    if not user.is_operator:
        raise PermissionError("operator role required")
    fn = IMPORTERS.get(fmt)
    if fn is None:
        raise RetrainError(f"unknown import format {fmt!r}: one of {', '.join(IMPORTERS)}")
    items = fn(engine, sample_dir, path)
    _check(items)
    return set_labels(engine, user, items, "import", by=f"{fmt}:{path.name}")
