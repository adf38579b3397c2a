"""Detection decoding for `edge-runtime convert`: a YAML/JSON decoding file and an SSD anchors .npy.

The file holds the fields of :class:`~edge_runtime.package.manifest.SsdDecoding` or
:class:`~edge_runtime.package.manifest.YoloDecoding` (``type: ssd`` or ``type: yolo``), exactly as they will
appear in the manifest. SSD anchors travel in the package as ``anchors.npy``. Both are read and checked before
any model is loaded, and every problem is one line naming the file.

Example (BlazeFace)::

    type: ssd
    boxes_output: regressors
    scores_output: classificators
    scale: [128, 128, 128, 128]
    num_keypoints: 6
    nms: weighted
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from converters.model import TensorInfo
from edge_runtime.errors import ConversionError, first_validation_error
from edge_runtime.package.manifest import SsdDecoding, YoloDecoding

ANCHORS_FILE = "anchors.npy"
DetectionDecoding = SsdDecoding | YoloDecoding


def _parse(path: Path) -> object:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversionError(f"--decoding {path}: cannot read it ({exc})") from exc
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConversionError(f"--decoding {path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {first}") from exc


def load_decoding(path: Path, with_anchors: bool) -> DetectionDecoding:
    """The SSD or YOLO decoding in ``path``; an SSD one gets ``anchors_file: anchors.npy`` when it names none."""
    data = _parse(Path(path))
    if not isinstance(data, dict):
        raise ConversionError(f"--decoding {path}: expected a mapping of decoding fields, got {type(data).__name__}")
    kind = data.get("type")
    if kind not in ("ssd", "yolo"):
        raise ConversionError(f"--decoding {path}: 'type' must be ssd or yolo, got {kind!r}")
    if kind == "ssd":
        if data.setdefault("anchors_file", ANCHORS_FILE) != ANCHORS_FILE:
            raise ConversionError(
                f"--decoding {path}: anchors_file must be {ANCHORS_FILE} (the --anchors file is stored under that name)"
            )
        if not with_anchors:
            raise ConversionError(f"--decoding {path}: an SSD decoding needs its anchors: give --anchors FILE.npy")
    elif with_anchors:
        raise ConversionError("--anchors applies to SSD decodings only; this --decoding is YOLO")
    cls: type[DetectionDecoding] = SsdDecoding if kind == "ssd" else YoloDecoding
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        where, msg = first_validation_error(exc)
        raise ConversionError(f"--decoding {path}: {where + ': ' if where else ''}{msg}") from exc


def load_anchors(path: Path) -> bytes:
    """``anchors.npy`` contents: float32 [N, 4] (cx, cy, w, h, normalised), checked."""
    try:
        arr = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConversionError(f"--anchors {path}: not a readable .npy array ({first})") from exc
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
        raise ConversionError(f"--anchors {path}: expected an [N, 4] array (cx, cy, w, h), got shape {arr.shape}")
    if arr.dtype.kind not in "fiu" or not np.all(np.isfinite(arr)):
        raise ConversionError(f"--anchors {path}: anchors must be finite numbers (got dtype {arr.dtype})")
    buf = io.BytesIO()
    np.save(buf, arr.astype(np.float32))
    return buf.getvalue()


def _anchor_count(data: bytes | Path | None) -> int | None:
    if data is None:
        return None
    try:
        arr = np.load(io.BytesIO(data) if isinstance(data, bytes) else Path(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ConversionError(f"{ANCHORS_FILE}: not a readable .npy array ({exc})") from exc
    return int(arr.shape[0]) if arr.ndim == 2 else None


def check_against_model(decoding: object, outputs: Sequence[TensorInfo], anchors: bytes | Path | None) -> None:
    """The detection decoding names real outputs of the right rank; SSD anchors match the boxes output."""
    if not isinstance(decoding, SsdDecoding | YoloDecoding):
        return
    by_name = {t.name: t for t in outputs}
    wanted = (
        {"boxes_output": decoding.boxes_output, "scores_output": decoding.scores_output}
        if isinstance(decoding, SsdDecoding)
        else {"output": decoding.output}
    )
    for field, name in wanted.items():
        if name not in by_name:
            raise ConversionError(f"decoding {field} {name!r} is not an output of the model (outputs: {list(by_name)})")
    if isinstance(decoding, YoloDecoding):
        shape = by_name[decoding.output].shape
        if len([d for d in shape if d != 1]) != 2 or len(shape) > 3:
            raise ConversionError(f"YOLO output {decoding.output!r} has shape {list(shape)}; expected [1, rows, cols]")
        return
    boxes = by_name[decoding.boxes_output].shape
    need = 4 + 2 * decoding.num_keypoints
    if boxes and boxes[-1] > 0 and boxes[-1] < need:
        raise ConversionError(
            f"SSD boxes output {decoding.boxes_output!r} has {boxes[-1]} values per anchor; "
            f"4 + 2 x {decoding.num_keypoints} keypoints need {need}"
        )
    count, per_image = _anchor_count(anchors), int(np.prod([d for d in boxes[:-1] if d > 0], dtype=np.int64))
    if count is not None and boxes and min(boxes) > 0 and count != per_image:
        raise ConversionError(f"{count} anchors given but the boxes output {list(boxes)} holds {per_image} anchors")
