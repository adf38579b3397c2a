"""A plain PyTorch CNN and the labelled digits it learns, for the pruning figures and tests (no downloads).

Data: scikit-learn's 8x8 digits (they ship inside the package), upscaled to grey frames, written as an .npz
with an ``images`` array (N, H, W uint8) and a ``labels`` array: the calibration format `convert` reads.
The model is built in plain torch (torchvision does not install beside this torch): conv-BN-ReLU blocks, global
average pooling and a Linear classifier. Pickled modules name this module, so import it as
``benchmarks.digits_cnn`` with the repository root on the path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

SPLIT = 1437  # digits 0..1436 to train and calibrate, 1437..1796 held out (360 samples)


def digits(size: int) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as (N, size, size) uint8 grey frames and their labels."""
    import cv2
    from sklearn.datasets import load_digits

    d = load_digits()
    frames = np.stack(
        [cv2.resize((img * 16).clip(0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
         for img in d.images]
    )  # fmt: skip
    return frames, d.target.astype(np.int64)


def write_npz(path: Path, frames: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=frames, labels=labels)
    return path


def make_cnn(widths: tuple[int, ...] = (32, 64, 128), seed: int = 0) -> Any:
    """conv-BN-ReLU blocks (a 2x2 max-pool after each block but the first), global average pool, Linear head."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    cin = 1
    for i, c in enumerate(widths):
        layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        if i > 0:
            layers.append(nn.MaxPool2d(2))
        cin = c
    layers += [nn.Conv2d(cin, cin, 3, padding=1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]  # fmt: skip
    return nn.Sequential(*layers)


def train(model: Any, frames: np.ndarray, labels: np.ndarray, epochs: int, lr: float = 3e-3, seed: int = 0) -> float:
    """Adam on the frames scaled to [0, 1] (what `convert`'s default image normalisation gives); last loss."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(frames[:, None].astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = order[i : i + 32]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return float(loss.detach())


def accuracy(model: Any, frames: np.ndarray, labels: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(frames[:, None].astype(np.float32) / 255.0))
    return float((out.argmax(-1).numpy() == labels).mean())
