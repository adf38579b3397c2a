"""Auto-labelling by a teacher: a bigger float ONNX model the user provides, run on the server.

The teacher sees what the student's training data holds: the parent package's float preprocessing of each sample
(``snapshot.float_input``, batch axis added). Its first output is read as class scores (a softmax is applied when
they do not already sum to one). A sample gets a teacher label only when no person or import label exists and the
teacher's probability reaches ``min_confidence``; the probability is kept, the origin is ``teacher``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from edge_runtime.api import load
from fleet.retrain import RetrainError
from fleet.retrain import labels as lab
from fleet.retrain import snapshot as snap
from fleet.retrain.gates import class_names
from fleet.server import registry as reg
from fleet.server.auth import User
from fleet.server.db import tables as t

MAX_SAMPLES = 10_000


def _probs(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, np.float64).reshape(-1)
    if np.all(s >= 0) and abs(s.sum() - 1.0) < 1e-3:
        return s
    e = np.exp(s - s.max())
    return e / e.sum()


def auto_label(engine: Any, data_dir: Path, user: User, model: str, version: str, teacher: Path,
               min_confidence: float = 0.9, limit: int = MAX_SAMPLES) -> dict[str, Any]:
    """Label the samples nobody labelled yet with ``teacher``'s top class (operator)."""
    import onnxruntime as ort

    if not user.is_operator:
        raise PermissionError("operator role required")
    if not 0 < min_confidence <= 1:
        raise RetrainError("min_confidence must be in (0, 1]")
    try:
        sess = ort.InferenceSession(str(teacher), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
        raise RetrainError(f"cannot load the teacher model {teacher}: {str(exc).splitlines()[0][:200]}") from None
    with engine.connect() as conn:
        row = reg.get_version(conn, model, version)
        done = set(lab.effective(conn, include_teacher=False))
        rows = [r for r in conn.execute(select(t.samples.c.device, t.samples.c.sample_id, t.samples.c.sha256,
                                               t.samples.c.ext).limit(limit))
                if (r.device, r.sample_id) not in done]
    items, low, unreadable = [], 0, 0
    in_name = sess.get_inputs()[0].name
    with load(reg.package_path(data_dir, row.sha256), allow_unsigned=True) as student:
        classes = class_names(student)
        for r in rows:
            frame = snap.read_image(data_dir / "samples" / r.sha256[:2] / f"{r.sha256}.{r.ext}")
            if frame is None:
                unreadable += 1
                continue
            x = snap.float_input(student, frame)[None].astype(np.float32)
            p = _probs(sess.run(None, {in_name: x})[0])
            k = int(p.argmax())
            if p[k] < min_confidence or k >= len(classes):
                low += 1
                continue
            items.append(lab.Label(r.device, r.sample_id, classes[k], confidence=round(float(p[k]), 4)))
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()[:12]
    lab.set_labels(engine, user, items, "teacher", by=f"teacher:{digest}")
    return {"labelled": len(items), "below_confidence": low, "unreadable": unreadable, "teacher": digest}
