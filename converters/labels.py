"""Class labels that come with validation data: a folder per class, ``labels.json`` (file -> class), a
``labels.csv`` (file,class rows) beside the images, or a ``labels`` array in an .npz file.

A label is a class name or an index; :func:`class_indices` maps names onto the model's outputs through the
``--labels`` file (class names in output order).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

from edge_runtime.errors import CalibrationError, ConversionError

LABEL_FILES = ("labels.json", "labels.csv")


def _read_json(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise CalibrationError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, str | int) for v in data.values()):
        raise CalibrationError(f"{path}: expected one JSON object mapping file name -> class (name or index)")
    return {str(k): str(v) for k, v in data.items()}


def _read_csv(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.reader(f)):
                if not row or row[0].startswith("#"):
                    continue
                if len(row) < 2:
                    raise CalibrationError(f"{path} line {i + 1}: expected 'file,class'")
                if i == 0 and row[0].strip().lower() in ("file", "filename", "path", "image"):
                    continue  # a header
                out[row[0].strip()] = row[1].strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"cannot read {path}: {exc}") from exc
    return out


def folder_labels(folder: Path, files: Sequence[Path]) -> list[str | None] | None:
    """Labels of ``files`` (images in ``folder`` or in class subfolders of it), or None when there are none."""
    if any(f.parent != folder for f in files):
        return [f.parent.name if f.parent != folder else None for f in files]
    for name in LABEL_FILES:
        path = folder / name
        if path.is_file():
            table = _read_json(path) if name.endswith(".json") else _read_csv(path)
            labels = [table.get(f.name) for f in files]
            if all(v is None for v in labels):
                raise CalibrationError(f"{path} names none of the {len(files)} image files in {folder}")
            return labels
    return None


def class_indices(raw: Sequence[str | None], class_names: Sequence[str] | None, classes: int) -> list[int | None]:
    """Raw labels -> output indices: an integer is an index, a name is looked up in the --labels class names."""
    lookup = {n: i for i, n in enumerate(class_names or ())}
    out: list[int | None] = []
    unknown: set[str] = set()
    for v in raw:
        if v is None:
            out.append(None)
        elif v in lookup:
            out.append(lookup[v])
        elif v.lstrip("-").isdigit():
            out.append(int(v))
        else:
            unknown.add(v)
            out.append(None)
    if unknown:
        names = ", ".join(sorted(unknown)[:5])
        hint = ("give --labels FILE with the model's class names, one per line in output order" if not class_names
                else "they are not in the --labels file")  # fmt: skip
        raise ConversionError(f"validation labels name classes {names}: {hint}")
    bad = sorted({i for i in out if i is not None and not 0 <= i < classes})
    if classes > 0 and bad:
        raise ConversionError(f"validation labels {bad[:5]} are outside the model's {classes} classes")
    return out
