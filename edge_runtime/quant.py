"""Affine int8/uint8 quantization written out: real = scale * (q - zero_point)."""

from __future__ import annotations

import numpy as np

from edge_runtime.package.manifest import Quantization

_RANGES = {np.dtype(np.int8): (-128, 127), np.dtype(np.uint8): (0, 255)}


def _params(q: Quantization, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    scale = np.asarray(q.scale, dtype=np.float32)
    zp = np.asarray(q.zero_point, dtype=np.float32)
    if scale.size > 1 and q.axis is not None:
        shape = [1] * ndim
        shape[q.axis] = scale.size
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return scale, zp


def quantize(x: np.ndarray, q: Quantization, dtype: np.dtype | type) -> np.ndarray:
    """Float array -> int8/uint8 with round-half-to-even and saturation (as TFLite and onnxruntime do)."""
    dt = np.dtype(dtype)
    lo, hi = _RANGES[dt]
    scale, zp = _params(q, x.ndim)
    return np.clip(np.rint(x / scale) + zp, lo, hi).astype(dt)


def dequantize(x: np.ndarray, q: Quantization | None) -> np.ndarray:
    """int8/uint8 array -> float32; float arrays pass through as float32."""
    if q is None or x.dtype.kind == "f":
        return x.astype(np.float32, copy=False)
    scale, zp = _params(q, x.ndim)
    return ((x.astype(np.float32) - zp) * scale).astype(np.float32, copy=False)
