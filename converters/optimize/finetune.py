"""Fine-tuning a pruned module: a short built-in loop on labelled data, or the user's own training command.

The training-command contract (the same as re-training): the command gets a data folder, the input model and
an output path, as ``{data}``, ``{model}``, ``{output}`` in the command line and as the environment variables
``EDGE_TRAIN_DATA``, ``EDGE_TRAIN_MODEL``, ``EDGE_TRAIN_OUTPUT``. The data folder holds ``train.npz`` (``x``: the
model's float inputs, preprocessed exactly as on the device; ``y``: integer class labels when the data has
them). The input model is a whole pickled module (torch.save(model)); the command writes one to the output path.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters.optimize import PruningError

ENV_DATA, ENV_MODEL, ENV_OUTPUT = "EDGE_TRAIN_DATA", "EDGE_TRAIN_MODEL", "EDGE_TRAIN_OUTPUT"


@dataclass(frozen=True)
class Labelled:
    """Float model inputs (one sample per row, first input only) and their class indices."""

    x: np.ndarray
    y: np.ndarray | None


def top1(module: Any, data: Labelled, batch: int = 64) -> float | None:
    """Top-1 accuracy of ``module`` (first output) on labelled data; None without labels."""
    import torch

    if data.y is None or len(data.y) == 0:
        return None
    module.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(data.x), batch):
            out = module(torch.from_numpy(data.x[i : i + batch]))
            out = out[0] if isinstance(out, list | tuple) else out
            hits += int((out.argmax(-1).numpy() == data.y[i : i + batch]).sum())
    return hits / len(data.y)


def builtin(module: Any, data: Labelled, epochs: int, lr: float = 1e-3, batch: int = 32, seed: int = 0) -> str:
    """Train ``module`` in place with Adam and cross-entropy on the first output; returns a one-line summary."""
    import torch

    if data.y is None:
        raise PruningError("the built-in fine-tune needs labelled data (an .npz with a 'labels' array, class "
                           "folders or labels.csv beside the images), or give --train-cmd")  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y.astype(np.int64))
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    last = float("nan")
    for _ in range(epochs):
        module.train()
        order = torch.randperm(len(x), generator=gen)
        total, n = 0.0, 0
        for i in range(0, len(x), batch):
            idx = order[i : i + batch]
            if len(idx) < 2:
                continue  # batch norm cannot train on one sample
            opt.zero_grad()
            out = module(x[idx])
            loss = loss_fn(out[0] if isinstance(out, list | tuple) else out, y[idx])
            loss.backward()
            opt.step()
            total, n = total + float(loss) * len(idx), n + len(idx)
        last = total / max(n, 1)
    module.eval()
    return f"built-in: {epochs} epoch(s) of Adam lr {lr:g} on {len(x)} labelled samples, last loss {last:.4f}"


def write_data(folder: Path, data: Labelled) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x": data.x} if data.y is None else {"x": data.x, "y": data.y.astype(np.int64)}
    np.savez(folder / "train.npz", **arrays)  # type: ignore[arg-type]
    return folder


def command(cmd: str, module: Any, data: Labelled, work: Path, timeout_s: float | None = None) -> tuple[Any, str]:
    """Run the user's training command on the pruned module; returns (the module it wrote, a summary line)."""
    import torch

    folder = write_data(work / "train-data", data)
    model_in, model_out, log = work / "pruned-in.pt", work / "pruned-out.pt", work / "train.log"
    torch.save(module, str(model_in))
    paths = {"data": str(folder), "model": str(model_in), "output": str(model_out)}
    try:
        argv = [part.format(**paths) for part in shlex.split(cmd)]
    except (ValueError, KeyError, IndexError) as exc:
        raise PruningError(f"--train-cmd {cmd!r}: cannot parse it ({exc}); placeholders are {{data}}, {{model}}, "
                           "{output}") from exc  # fmt: skip
    env = dict(os.environ, **{ENV_DATA: paths["data"], ENV_MODEL: paths["model"], ENV_OUTPUT: paths["output"]})
    try:
        with open(log, "wb") as out:
            code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout_s).returncode
    except FileNotFoundError as exc:
        raise PruningError(f"--train-cmd: {argv[0]!r} is not a command that can be run") from exc
    except subprocess.TimeoutExpired as exc:
        raise PruningError(f"--train-cmd did not finish within {timeout_s:.0f} s") from exc
    tail = _tail(log)
    if code != 0:
        raise PruningError(f"--train-cmd exited with code {code}" + (f": {tail}" if tail else ""))
    if not model_out.is_file():
        raise PruningError(f"--train-cmd exited 0 but wrote no model to {{output}} ({model_out})")
    try:
        trained = torch.load(str(model_out), map_location="cpu", weights_only=False)  # noqa: S614 - laptop, user's own
    except Exception as exc:  # torch raises many types for a bad file
        raise PruningError(f"--train-cmd wrote {model_out}, which torch.load cannot read: {exc}") from exc
    if not isinstance(trained, torch.nn.Module):
        raise PruningError(f"--train-cmd wrote a {type(trained).__name__}, not a whole module (torch.save(model))")
    trained.eval()
    summary = f"command: {argv[0]} ({len(data.x)} samples given; exit 0)"
    return trained, summary + (f"; last line: {tail}" if tail else "")


def _tail(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def stack_first_input(batches: Sequence[list[np.ndarray]]) -> np.ndarray:
    """One array of the first model input from per-sample input lists (each with a batch axis of 1)."""
    return np.concatenate([b[0] for b in batches], axis=0).astype(np.float32)
