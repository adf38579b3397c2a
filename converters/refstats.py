"""Reference statistics: what calibration inputs and the float model's outputs looked like (the drift baseline).

Image inputs: per-channel mean/std of raw pixels (0..255, in the model's colour order) and a histogram of
per-sample brightness. Tensor inputs: per-channel (last axis) mean/std and a histogram of values. Outputs: top-1
class histogram and top-score histogram (classifiers), mean/std of each output tensor.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_runtime.package.manifest import Histogram, InputSpec, ReferenceStats

_MAX_VALUES = 200_000  # tensor values kept for the value histogram (bounded memory)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / np.sum(e, axis=-1, keepdims=True)


def _hist(values: np.ndarray, lo: float, hi: float, bins: int) -> Histogram:
    if hi <= lo:
        hi = lo + 1.0
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    total = max(1, int(counts.sum()))
    return Histogram(edges=tuple(float(e) for e in edges), counts=tuple(float(c) / total for c in counts))


class RefStatsBuilder:
    """Accumulates statistics one sample at a time; ``result()`` gives the manifest's ReferenceStats."""

    def __init__(self, spec: InputSpec, frame_order: str, class_output: int | None, activation: str) -> None:
        self.spec, self.frame_order = spec, frame_order
        self.class_output, self.activation = class_output, activation
        self.n = 0
        self._csum: np.ndarray | None = None
        self._csq: np.ndarray | None = None
        self._ccount = 0
        self._brightness: list[float] = []
        self._values: list[np.ndarray] = []
        self._kept = 0
        self._classes: dict[int, int] = {}
        self._top: list[float] = []
        self._osum: list[float] = []
        self._osq: list[float] = []
        self._ocount: list[int] = []

    def _channels(self, raw: np.ndarray) -> np.ndarray:
        x = np.asarray(raw)
        if self.spec.kind == "image" and x.dtype.kind == "f":
            return self._tensor_pixels(x)
        if self.spec.kind == "image":
            if x.ndim == 2:
                x = x[:, :, None]
            x = x[:, :, :3]
            if self.spec.height_width_channels[2] == 1 and x.shape[2] == 3:  # as preprocess makes a grey input
                code = cv2.COLOR_RGB2GRAY if self.frame_order == "RGB" else cv2.COLOR_BGR2GRAY
                x = cv2.cvtColor(np.ascontiguousarray(x), code)[:, :, None]
            if x.shape[2] == 3 and self.frame_order in ("RGB", "BGR") and self.frame_order != self.spec.color_order:
                x = x[:, :, ::-1]
            return x.reshape(-1, x.shape[2]).astype(np.float64)
        return x.reshape(-1, x.shape[-1] if x.ndim else 1).astype(np.float64)

    def _tensor_pixels(self, x: np.ndarray) -> np.ndarray:
        """A preprocessed float image tensor back in pixel units (the drift baseline compares raw pixels)."""
        t = x.reshape(self.spec.shape[1:]).astype(np.float64)
        if self.spec.layout == "NCHW":
            t = np.moveaxis(t, 0, -1)
        norm = self.spec.normalization
        t = t * np.asarray(norm.std, np.float64) + np.asarray(norm.mean, np.float64)
        return t.reshape(-1, t.shape[-1])

    def add_input(self, raw: np.ndarray | dict[str, np.ndarray]) -> None:
        if isinstance(raw, dict):
            raw = raw[self.spec.name]
        flat = self._channels(raw)
        if self._csum is None or self._csum.shape[0] != flat.shape[1]:
            self._csum, self._csq, self._ccount = np.zeros(flat.shape[1]), np.zeros(flat.shape[1]), 0
        assert self._csq is not None
        self._csum += flat.sum(axis=0)
        self._csq += np.square(flat).sum(axis=0)
        self._ccount += flat.shape[0]
        self._brightness.append(float(flat.mean()))
        if self.spec.kind == "tensor" and self._kept < _MAX_VALUES:
            vals = flat.ravel()[: _MAX_VALUES - self._kept]
            self._values.append(vals)
            self._kept += vals.size
        self.n += 1

    def add_outputs(self, outputs: list[np.ndarray]) -> None:
        if not self._osum:
            self._osum, self._osq, self._ocount = [0.0] * len(outputs), [0.0] * len(outputs), [0] * len(outputs)
        for i, y in enumerate(outputs):
            y64 = y.astype(np.float64)
            self._osum[i] += float(y64.sum())
            self._osq[i] += float(np.square(y64).sum())
            self._ocount[i] += y64.size
        if self.class_output is not None:
            scores = outputs[self.class_output].astype(np.float64).ravel()
            if self.activation == "softmax":
                scores = softmax(scores)
            elif self.activation == "sigmoid":
                scores = 1.0 / (1.0 + np.exp(-scores))
            top = int(np.argmax(scores))
            self._classes[top] = self._classes.get(top, 0) + 1
            self._top.append(float(scores[top]))

    def result(self, num_classes: int | None) -> ReferenceStats:
        fields: dict = {"samples": self.n}
        if self._csum is not None and self._ccount:
            mean = self._csum / self._ccount
            std = np.sqrt(np.maximum(self._csq / self._ccount - mean**2, 0.0))  # type: ignore[operator]
            fields["channel_mean"] = tuple(round(float(v), 4) for v in mean)
            fields["channel_std"] = tuple(round(float(v), 4) for v in std)
        if self.spec.kind == "image" and self._brightness:
            fields["brightness"] = _hist(np.asarray(self._brightness), 0.0, 255.0, 16)
        if self._values:
            vals = np.concatenate(self._values)
            fields["input_values"] = _hist(vals, float(vals.min()), float(vals.max()), 20)
        if self._ocount:
            means = [s / c for s, c in zip(self._osum, self._ocount, strict=True)]
            fields["output_mean"] = tuple(float(m) for m in means)
            fields["output_std"] = tuple(
                float(np.sqrt(max(q / c - m * m, 0.0))) for q, c, m in zip(self._osq, self._ocount, means, strict=True)
            )
        if self.class_output is not None and self._top and num_classes:
            counts = np.zeros(num_classes)
            for k, v in self._classes.items():
                if k < num_classes:
                    counts[k] = v
            fields["class_histogram"] = tuple(float(c) / len(self._top) for c in counts)
            fields["confidence"] = _hist(np.asarray(self._top), 0.0, 1.0, 10)
        return ReferenceStats(**fields)
