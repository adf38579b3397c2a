"""A small CNN trained on the labelled digits, built once per test process for the pruning and --choose tests.

The model is an nn.Sequential of standard layers (pickled with torch.save, it loads in any process with torch);
data: 16x16 grey digits as .npz files with ``images`` and ``labels`` (the calibration format `convert` reads).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from benchmarks import digits_cnn

SIZE = 16
INPUT_SHAPE = "1,1,16,16"

# CI installs torch and torch-pruning (EDGE_RUNTIME_WITH_TORCH=1 in .ci/run) and must not skip these silently.
needs_prune = pytest.mark.skipif(
    (importlib.util.find_spec("torch") is None or importlib.util.find_spec("torch_pruning") is None)
    and os.environ.get("EDGE_RUNTIME_WITH_TORCH") != "1",
    reason="torch and torch-pruning are not installed (pip install 'edge-runtime[prune]')",
)


@dataclass(frozen=True)
class SmallCnn:
    model: Path  # torch.save(module)
    train: Path  # digits 0..1436
    valid: Path  # digits 1437..1796
    accuracy: float  # float top-1 on valid


@functools.cache
def small_cnn() -> SmallCnn:
    import torch

    root = Path(tempfile.mkdtemp(prefix="prune-tests-"))
    frames, labels = digits_cnn.digits(SIZE)
    split = digits_cnn.SPLIT
    torch.set_num_threads(1)
    model = digits_cnn.make_cnn((8, 16, 32))
    digits_cnn.train(model, frames[:split], labels[:split], epochs=3)
    torch.save(model, str(root / "cnn.pt"))
    return SmallCnn(
        root / "cnn.pt",
        digits_cnn.write_npz(root / "train.npz", frames[:split], labels[:split]),
        digits_cnn.write_npz(root / "valid.npz", frames[split:], labels[split:]),
        digits_cnn.accuracy(model, frames[split:], labels[split:]),
    )
