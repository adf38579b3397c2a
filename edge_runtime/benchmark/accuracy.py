"""Validation data for `bench --validation` and the quality figures computed from the variants' outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.schema import AccuracyResult
from edge_runtime.benchmark.stats import cosine, top1

_X_KEYS = ("x", "inputs", "images", "data")
_Y_KEYS = ("y", "labels", "targets")


@dataclass(frozen=True)
class ValidationData:
    """Float model inputs, one sample per row, and optional integer labels."""

    source: str
    x: np.ndarray
    y: np.ndarray | None = None


def load_validation(path: str | Path, limit: int | None = None) -> ValidationData:
    """Read an .npz (arrays x/inputs and optional y/labels) or an .npy of inputs; samples on the first axis.

    Inputs are what the float model takes (already preprocessed); int8 variants get them quantized with their
    own input parameters, and NHWC/NCHW is adapted to each model.
    """
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"validation data {path} does not exist")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BenchmarkError(f"cannot read validation data {path}: {exc}") from exc
    if isinstance(loaded, np.ndarray):
        x, y = loaded, None
    else:
        with loaded:
            xk = next((k for k in _X_KEYS if k in loaded.files), None)
            if xk is None:
                raise BenchmarkError(f"{path} has no inputs array (one of {', '.join(_X_KEYS)}); it has {loaded.files}")
            yk = next((k for k in _Y_KEYS if k in loaded.files), None)
            x, y = loaded[xk], (loaded[yk] if yk else None)
    if x.ndim < 2 or len(x) == 0:
        raise BenchmarkError(f"validation inputs in {path} need a sample axis and at least one sample, got {x.shape}")
    if x.dtype.kind not in "fiu":
        raise BenchmarkError(f"validation inputs in {path} must be numeric, got {x.dtype}")
    if y is not None and (y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu"):
        raise BenchmarkError(f"labels in {path} must be {len(x)} integers, got {y.dtype} {y.shape}")
    if limit:
        x, y = x[:limit], (y[:limit] if y is not None else None)
    return ValidationData(str(path), x.astype(np.float32), y)


def score_outputs(
    outputs: np.ndarray | None,
    data: ValidationData,
    baseline_outputs: np.ndarray | None,
    baseline: str | None,
    note: str | None = None,
) -> AccuracyResult:
    """Top-1 accuracy against labels, and agreement with the baseline variant on output 0 (dequantized)."""
    if outputs is None:
        return AccuracyResult(samples=0, note=note or "no outputs")
    res = AccuracyResult(samples=len(outputs), note=note)
    if data.y is not None:
        res.top1_accuracy = float((top1(outputs) == data.y[: len(outputs)]).mean())
    if baseline_outputs is None or baseline is None:
        return res
    if baseline_outputs.shape != outputs.shape:
        res.note = f"output shape {outputs.shape[1:]} differs from the baseline's {baseline_outputs.shape[1:]}"
        return res
    res.baseline = baseline
    res.top1_agreement = float((top1(outputs) == top1(baseline_outputs)).mean())
    res.cosine_similarity = cosine(outputs, baseline_outputs)
    res.max_abs_error = float(np.abs(outputs.astype(np.float64) - baseline_outputs).max())
    return res
