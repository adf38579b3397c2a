"""scikit-learn source: an estimator saved with pickle or joblib, converted to ONNX with skl2onnx.

Unpickling runs code from the file, so it happens here on the laptop only; a device never loads a pickle.
"""

from __future__ import annotations

import pickle  # noqa: S403 - the user's own model file, laptop side only (see module docstring)
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from converters.model import FloatModel
from edge_runtime.errors import ConversionError, MissingDependencyError
from edge_runtime.fsutil import sha256_file


def _unpickle(path: Path) -> Any:
    try:
        if path.suffix == ".joblib":
            import joblib

            return joblib.load(path)
        with open(path, "rb") as f:
            return pickle.load(f)  # noqa: S301 - see module docstring
    except ModuleNotFoundError as exc:
        raise ConversionError(f"{path} needs the Python package '{exc.name}' to be loaded") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
        raise ConversionError(f"{path} is not a readable pickle/joblib file (corrupt or truncated?): {exc}") from exc


def _feature_count(est: Any, input_shape: Sequence[int] | None) -> int:
    n = getattr(est, "n_features_in_", None)
    if n is None and input_shape:
        n = int(input_shape[-1])
    if n is None:
        raise ConversionError("cannot tell how many features the estimator takes: give --input-shape 1,N")
    return int(n)


def load_sklearn(path: Path, workdir: Path, input_shape: Sequence[int] | None = None) -> FloatModel:
    """Pickle/joblib estimator -> float ONNX (probabilities as a plain tensor, no ZipMap)."""
    try:
        import skl2onnx
        import sklearn
        from sklearn.base import BaseEstimator, is_classifier
    except ImportError as exc:
        raise MissingDependencyError("skl2onnx/scikit-learn (for scikit-learn sources)", "convert") from exc
    from converters.sources.onnx import finish_onnx

    est = _unpickle(path)
    if not isinstance(est, BaseEstimator):
        raise ConversionError(f"{path} holds a {type(est).__name__}, not a scikit-learn estimator")
    x = np.zeros((1, _feature_count(est, input_shape)), dtype=np.float32)
    options = {"zipmap": False} if is_classifier(est) else None
    try:
        onx = skl2onnx.to_onnx(est, x, options=options)
    except Exception as exc:  # skl2onnx raises many types (RuntimeError, NotImplementedError, its own)
        raise ConversionError(
            f"skl2onnx cannot convert {type(est).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from exc
    kwargs = {
        "source_format": "sklearn",
        "source_path": path,
        "source_sha256": sha256_file(path),
        "tool_versions": {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__},
    }
    return finish_onnx(onx, kwargs, workdir, (1, x.shape[1]))
