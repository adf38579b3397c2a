"""Raw outputs: dequantized float32 arrays by output name."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_runtime.package.manifest import TensorSpec
from edge_runtime.quant import dequantize


def raw_outputs(outputs: Sequence[np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Every output dequantized with its TensorSpec quantization (float outputs pass through)."""
    return {s.name: dequantize(np.asarray(o), s.quantization) for o, s in zip(outputs, specs, strict=True)}
