"""The one preprocessing implementation: frame or array -> model input, driven by the manifest's InputSpec.

The converter calibrates through this module and the device feeds the model through it, so int8 calibration and
inference see exactly the same pixels. For 8-bit frames every per-pixel step after resizing (normalisation and,
for int8/uint8 inputs, quantization) is folded into one 256-entry lookup table per channel: no float round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from edge_runtime.errors import InputError
from edge_runtime.package.manifest import InputSpec
from edge_runtime.quant import quantize

FrameOrder = Literal["BGR", "RGB", "GRAY"]


@dataclass(frozen=True)
class Transform:
    """Maps model-input pixel coordinates back to frame pixels: frame = (model - offset) / scale."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float
    frame_width: int
    frame_height: int

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        """``xy[..., 0::2]`` are x and ``xy[..., 1::2]`` are y, in model-input pixels."""
        out = np.asarray(xy, dtype=np.float32).copy()
        out[..., 0::2] = (out[..., 0::2] - self.offset_x) / self.scale_x
        out[..., 1::2] = (out[..., 1::2] - self.offset_y) / self.scale_y
        return out


def _per_channel(values: tuple[float, ...], channels: int, what: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(channels, values[0], dtype=np.float64)
    if len(values) != channels:
        raise InputError(f"normalization {what} has {len(values)} values for {channels} channels")
    return np.asarray(values, dtype=np.float64)


def build_lut(spec: InputSpec) -> np.ndarray:
    """[channels, 256] table: raw 8-bit pixel value -> model input value, in the model's dtype."""
    channels = spec.height_width_channels[2] if spec.kind == "image" else 1
    mean = _per_channel(spec.normalization.mean, channels, "mean")
    std = _per_channel(spec.normalization.std, channels, "std")
    pixels = np.arange(256, dtype=np.float64)
    real = (pixels[None, :] - mean[:, None]) / std[:, None]
    if spec.dtype in ("int8", "uint8"):
        assert spec.quantization is not None
        q = spec.quantization.model_copy(update={"axis": None}) if len(spec.quantization.scale) == 1 else None
        if q is None:
            raise InputError("per-channel quantized image inputs are not supported")
        return quantize(real, q, np.dtype(spec.dtype))
    return real.astype(np.dtype(spec.dtype))


class ImagePreprocessor:
    """8-bit frame (H, W[, C]) in ``frame_order`` -> batched model input plus the Transform back to the frame."""

    def __init__(self, spec: InputSpec, frame_order: FrameOrder = "BGR") -> None:
        if spec.kind != "image":
            raise InputError(f"input {spec.name!r} is not an image input")
        if frame_order not in ("BGR", "RGB", "GRAY"):
            raise InputError(f"frame order {frame_order!r} is not BGR, RGB or GRAY")
        self.spec = spec
        self.frame_order = frame_order
        self.height, self.width, self.channels = spec.height_width_channels
        if self.channels not in (1, 3):
            raise InputError(f"image input {spec.name!r} has {self.channels} channels; 1 or 3 are supported")
        lut = build_lut(spec)
        # cv2.LUT wants a (1, 256, C) table whose depth sets the output depth.
        self._lut = np.ascontiguousarray(lut.T.reshape(1, 256, self.channels))
        self._int8 = lut.dtype == np.int8
        if self._int8:  # cv2.LUT handles CV_8S tables via a uint8 view; reinterpret afterwards
            self._lut = self._lut.view(np.uint8)
        # Float inputs with one mean and std for every channel: an in-place multiply-add by scalars costs about
        # half a float cv2.LUT (which has no fast path for float tables; numpy's per-channel broadcast over a
        # last axis of 3 is slower still); x * (1/std) - mean/std in float32 is within 1e-6 of the table.
        self._affine: tuple[np.float32, np.float32] | None = None
        norm = spec.normalization
        if lut.dtype == np.float32 and len(norm.mean) == 1 and len(norm.std) == 1:
            self._affine = (np.float32(1.0 / norm.std[0]), np.float32(-norm.mean[0] / norm.std[0]))

    def _check(self, frame: np.ndarray) -> np.ndarray:
        if not isinstance(frame, np.ndarray) or frame.dtype != np.uint8:
            raise InputError("frames must be uint8 numpy arrays")
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
            raise InputError(f"frame of shape {frame.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
        if frame.shape[0] < 2 or frame.shape[1] < 2:
            raise InputError(f"frame of shape {frame.shape} is too small")
        return frame

    def _colour(self, frame: np.ndarray) -> np.ndarray:
        """The frame with the model's channel count (grey <-> colour); a channel swap is left to ``_swap``."""
        src = self.frame_order
        if frame.ndim == 3 and frame.shape[2] == 1:
            frame = frame[:, :, 0]
        if frame.ndim == 3 and frame.shape[2] == 4:
            frame = frame[:, :, :3]
        if frame.ndim == 2:  # grey frame
            return frame if self.channels == 1 else cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
        if self.channels == 1:
            return cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY if src == "BGR" else cv2.COLOR_RGB2GRAY)
        return frame

    def _swap(self, frame: np.ndarray, img: np.ndarray) -> np.ndarray:
        """BGR <-> RGB after resizing (the same pixels: resizing treats channels alone), on the small image."""
        src = self.frame_order
        if img.ndim == 3 and frame.ndim == 3 and frame.shape[2] >= 3 and src != "GRAY" \
                and self.spec.color_order != src:
            return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # same swap both ways
        return img

    def _geometry(self, frame: np.ndarray) -> tuple[np.ndarray, Transform]:
        h, w = frame.shape[:2]
        H, W = self.height, self.width
        mode = self.spec.resize
        if mode == "stretch":
            sx, sy = W / w, H / h
            out = frame if (w, h) == (W, H) else cv2.resize(frame, (W, H), interpolation=cv2.INTER_LINEAR)
            return out, Transform(sx, sy, 0.0, 0.0, w, h)
        if mode == "letterbox":
            s = min(W / w, H / h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
            left, top = (W - nw) // 2, (H - nh) // 2
            out = cv2.copyMakeBorder(
                resized, top, H - nh - top, left, W - nw - left, cv2.BORDER_CONSTANT, value=[self.spec.pad_value] * 3
            )
            return out, Transform(nw / w, nh / h, float(left), float(top), w, h)
        s = max(W / w, H / h)  # center_crop
        nw, nh = max(W, round(w * s)), max(H, round(h * s))
        resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        left, top = (nw - W) // 2, (nh - H) // 2
        out = resized[top : top + H, left : left + W]
        return out, Transform(nw / w, nh / h, -float(left), -float(top), w, h)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, Transform]:
        frame = self._check(frame)
        img, transform = self._geometry(self._colour(frame))
        img = self._swap(frame, img)
        if img.ndim == 2:
            img = img[:, :, None]
        img = np.ascontiguousarray(img)
        if self._affine is not None:
            values = img.astype(np.float32)
            values *= self._affine[0]
            values += self._affine[1]
        else:
            values = cv2.LUT(img, self._lut)
        if values.ndim == 2:
            values = values[:, :, None]
        if self._int8:
            values = values.view(np.int8)
        if self.spec.layout == "NCHW":
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values[None]), transform


class TensorPreprocessor:
    """Array (a sensor window, features) -> model input: normalise, quantize, add the batch dimension."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self._mean = np.asarray(spec.normalization.mean, dtype=np.float32)
        self._std = np.asarray(spec.normalization.std, dtype=np.float32)
        self._identity = spec.normalization.mean == (0.0,) and spec.normalization.std == (1.0,)

    def expected_shape(self) -> tuple[int, ...]:
        return self.spec.shape

    def __call__(self, array: np.ndarray) -> np.ndarray:
        x = np.asarray(array)
        shape = self.spec.shape
        if x.ndim == len(shape) - 1:
            x = x[None]
        if x.ndim != len(shape) or any(s not in (-1, d) for s, d in zip(shape, x.shape, strict=True)):
            raise InputError(f"input {self.spec.name!r} expects shape {list(shape)}, got {list(np.shape(array))}")
        if x.dtype.kind not in "fiub":
            raise InputError(f"input {self.spec.name!r} expects numbers, got dtype {x.dtype}")
        dt = np.dtype(self.spec.dtype)
        if dt.kind in "iub" and self.spec.quantization is None:
            return np.ascontiguousarray(x.astype(dt))
        x = x.astype(np.float32)
        if not self._identity:
            x = (x - self._mean) / self._std
        if self.spec.quantization is not None and dt in (np.int8, np.uint8):
            # NaN has no 8-bit value: the cast would give garbage, not an error (float inputs keep NaN: tree
            # models read it as a missing value)
            if np.isnan(x).any():
                raise InputError(f"input {self.spec.name!r} holds NaN, which a {dt.name} input cannot take")
            return np.ascontiguousarray(quantize(x, self.spec.quantization, dt))
        return np.ascontiguousarray(x.astype(dt))


def normalize_tensor_default() -> dict[str, tuple[float, ...]]:
    """Normalization fields meaning 'no normalisation' for tensor inputs."""
    return {"mean": (0.0,), "std": (1.0,)}
