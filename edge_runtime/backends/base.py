"""The small contract every inference backend meets: open a model file, describe its tensors, run it, close it.

A backend does no pre- or post-processing: arrays in the model's own dtypes go in, arrays come out, in the model's
own tensor order. Keeping it this thin is what keeps the runtime's overhead over the raw backend small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the backend sees it (-1 marks a dynamic dimension)."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class BackendOptions:
    """How to run a model: threads and, per backend, acceleration choices (taken from the device profile)."""

    threads: int = 1
    xnnpack: bool = True
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    graph_optimization: str = "all"


class Backend(Protocol):
    """An opened model. ``run`` takes the inputs in ``inputs`` order and returns outputs in ``outputs`` order."""

    name: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]

    def run(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]: ...

    def close(self) -> None: ...


class BackendLoader(Protocol):
    """What a backend module exports: a probe (None when usable, else the reason) and an opener."""

    def __call__(self, path: str, options: BackendOptions) -> Backend: ...
