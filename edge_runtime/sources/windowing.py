"""Cut a stream of numeric samples into fixed windows (size and hop) shaped for a model's tensor input."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import numpy as np

from edge_runtime.errors import ConfigError
from edge_runtime.package.manifest import InputSpec

_SPLIT = re.compile(r"[,;\s]+")
# One sample per line: far more than any sensor sends. Longer lines are refused before they are parsed, so a line
# can cost neither memory nor time (a line source also stops buffering a line at this length, see split_lines).
MAX_LINE_BYTES = 65536
# What a hostile line can raise while being parsed: bad numbers and types, 1e400-style integers, deep JSON nesting.
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError)


@dataclass(frozen=True)
class WindowSpec:
    """``size`` samples of ``channels`` values each, a new window every ``hop`` samples, delivered in ``shape``.

    A line holding ``size * channels`` values (when ``size`` > 1) is a whole window by itself.
    """

    size: int
    hop: int
    channels: int
    shape: tuple[int, ...]  # the window without the batch dimension, e.g. (size, channels) or (size,)

    def __post_init__(self) -> None:
        if self.size < 1 or self.channels < 1:
            raise ConfigError(f"window size and channels must be positive, got {self.size} x {self.channels}")
        if not 1 <= self.hop:
            raise ConfigError(f"window hop must be at least 1, got {self.hop}")

    @property
    def row_values(self) -> int:
        """Values in a line that is one whole window."""
        return self.size * self.channels

    def accepts(self, values: int) -> bool:
        """Whether a line of ``values`` numbers is one sample or one whole window."""
        return values in (self.channels, self.row_values)

    def describe(self) -> str:
        whole = f" or {self.row_values} (a whole window)" if self.size > 1 else ""
        return f"{self.channels}{whole}"


def window_spec_for(spec: InputSpec, hop: int | None = None, streaming: bool = False) -> WindowSpec:
    """The window a tensor input expects: time on the first axis after batch, channels after it.

    [1, N] -> windows of N samples of one value (a line of N values is one window); [1, T, C] -> T samples of C
    values; [1, T, C, 1] (spectrogram-style) too. The hop is ``hop`` (`run --window-hop`), else the manifest's
    ``window_hop``, else the window size. ``streaming`` (a stateful model) changes nothing any more: its [1, N]
    input is cut into windows of N like any other, with the manifest's hop.
    """
    del streaming
    if spec.kind != "tensor":
        raise ConfigError(f"input {spec.name!r} takes images, not sensor windows: use a camera or video source")
    dims = spec.shape[1:] if len(spec.shape) > 1 else spec.shape
    if not dims or any(d < 1 for d in dims):
        raise ConfigError(f"input {spec.name!r} has shape {list(spec.shape)}; sensor windows need fixed sizes")
    size, channels = dims[0], math.prod(dims[1:]) if len(dims) > 1 else 1
    return WindowSpec(size=size, hop=hop or spec.window_hop or size, channels=channels, shape=tuple(dims))


def parse_line(line: str | bytes) -> np.ndarray | None:
    """One sample's values from a text line: CSV/whitespace numbers, a JSON array, or a JSON object of numbers.

    Returns None for a line that does not parse (the caller counts it), or is longer than MAX_LINE_BYTES.
    Blank lines and ``#`` comments too. Never raises, whatever the line holds.
    """
    if len(line) > MAX_LINE_BYTES:
        return None
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: inf, refused below
            if text[0] in "[{":
                value = json.loads(text)
                if isinstance(value, dict):
                    value = list(value.values())
                arr = np.asarray(value, dtype=np.float32).ravel()
            else:
                arr = np.asarray([float(p) for p in _SPLIT.split(text) if p], dtype=np.float32)
    except _PARSE_ERRORS:
        return None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        return None
    return arr


class Windower:
    """Collects samples in a ring buffer; returns a window every ``hop`` samples once ``size`` samples are in."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._ring = np.zeros((spec.size, spec.channels), dtype=np.float32)
        self._count = 0  # samples pushed so far

    def push(self, values: np.ndarray) -> np.ndarray | None:
        """Add one sample (``channels`` values); a window (a new array, in ``spec.shape``) when one is due.

        A line of ``row_values`` values is a whole window: returned as it is, the ring left alone."""
        if self.spec.size > 1 and values.shape == (self.spec.row_values,):
            return values.astype(np.float32).reshape(self.spec.shape)
        if values.shape != (self.spec.channels,):
            raise ValueError(f"expected {self.spec.describe()} values, got {values.size}")
        pos = self._count % self.spec.size
        self._ring[pos] = values
        self._count += 1
        past_first = self._count - self.spec.size
        if past_first < 0 or past_first % self.spec.hop:
            return None
        start = self._count % self.spec.size  # oldest sample
        window = np.concatenate([self._ring[start:], self._ring[:start]])
        return window.reshape(self.spec.shape)
