"""The pruning stage of `convert --prune`: after the source and data are opened, before int8.

Prune the PyTorch module, fine-tune it (built in on the labelled calibration data, or the user's training
command), export the pruned module to float ONNX like any PyTorch source, and return a new Context holding it
(the source's name and hash stay the user's file). The int8 target and the accuracy guard then run as usual.
"""

from __future__ import annotations

import dataclasses
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from converters import calibration as cal
from converters.context import Context
from converters.labels import class_indices
from converters.optimize import PruneOptions, PruningError, finetune
from converters.optimize.prune import prune
from edge_runtime.package.optimization import PruningInfo


def load_module(path: Path) -> Any:
    """The user's whole pickled module (TorchScript cannot be pruned: it has no editable layers)."""
    import torch

    try:
        torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: S110 - not TorchScript, which is what pruning needs
        pass
    else:
        raise PruningError(f"{path} is TorchScript, which cannot be pruned: save the Python module with "
                           "torch.save(model) and pass that file")  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(str(path), map_location="cpu", weights_only=False)  # noqa: S614 - laptop, user's own file
    if not isinstance(obj, torch.nn.Module):
        raise PruningError(f"{path} holds a {type(obj).__name__}, not a module (torch.save(model))")
    return obj


def labelled(ctx: Context, subset: cal.Subset) -> finetune.Labelled:
    """The subset's first-input float tensors and class indices (samples without a label are dropped)."""
    batches = list(ctx.fbuild.over(subset)) if subset.dataset is ctx.data else list(ctx.vbuild.over(subset))
    x = finetune.stack_first_input(batches) if batches else np.zeros((0,), np.float32)
    raw = subset.labels()
    if raw is None:
        return finetune.Labelled(x, None)
    classes = ctx.fm.outputs[0].shape[-1] if ctx.fm.outputs else 0
    idx = class_indices(raw[: len(x)], ctx.plan.labels, classes)
    keep = [i for i, v in enumerate(idx) if v is not None]
    if not keep:
        return finetune.Labelled(x, None)
    return finetune.Labelled(x[keep], np.asarray([idx[i] for i in keep], np.int64))


def _fine_tune(module: Any, po: PruneOptions, train: finetune.Labelled, work: Path) -> tuple[Any, str, str]:
    if po.train_cmd:
        trained, summary = finetune.command(po.train_cmd, module, train, work, po.train_timeout_s)
        return trained, "command", summary
    if po.fine_tune_epochs == 0:
        return module, "none", "no fine-tune (--fine-tune-epochs 0)"
    if train.y is None:
        raise PruningError("pruning needs fine-tuning: give labelled calibration data (an .npz with a 'labels' "
                           "array, class folders, labels.csv), or --train-cmd, or --fine-tune-epochs 0 to skip "
                           "it")  # fmt: skip
    return module, "builtin", finetune.builtin(module, train, po.fine_tune_epochs, po.learning_rate)


# Pruned and fine-tuned modules of this process, so `bench --choose` prunes once per ratio for all its
# formats and precisions. Keyed by everything the result depends on.
_DONE: dict[tuple, tuple[Any, PruningInfo]] = {}  # type: ignore[type-arg]


def prune_stage(ctx: Context) -> tuple[Context, PruningInfo]:
    """Prune and fine-tune the context's PyTorch source; the returned Context holds the pruned float model."""
    import copy

    import torch

    po = ctx.opts.prune
    assert po is not None and ctx.opts.input_shape is not None  # plan() and the torch source checked both
    key = (ctx.fm.source_sha256, po, tuple(ctx.opts.input_shape), ctx.fingerprint, len(ctx.valid), ctx.plan.labels)
    if key not in _DONE:
        module, info = _prune_and_tune(ctx, po)
        _DONE[key] = (copy.deepcopy(module), info)
    else:
        ctx.say("pruned module reused from an earlier candidate of this run")
    module, info = _DONE[key]
    folder = ctx.work / "pruned"
    folder.mkdir(exist_ok=True)
    torch.save(module, str(folder / "model.pt"))
    from converters.sources import load_source

    fm = load_source(folder / "model.pt", folder, ctx.opts.input_shape)
    fm = dataclasses.replace(fm, source_path=ctx.fm.source_path, source_sha256=ctx.fm.source_sha256,
                             tool_versions={**fm.tool_versions, "torch-pruning": _tp_version()})  # fmt: skip
    return dataclasses.replace(ctx, fm=fm), info


def _prune_and_tune(ctx: Context, po: PruneOptions) -> tuple[Any, PruningInfo]:
    assert ctx.opts.input_shape is not None
    module = load_module(Path(ctx.opts.source))
    train = labelled(ctx, cal.Subset(ctx.data, ctx.calib.part, None, ctx.calib.holdout))
    valid = labelled(ctx, ctx.valid)
    before = finetune.top1(module, valid)
    res = prune(module, ctx.opts.input_shape, po.ratio, po.importance)
    ctx.say(f"pruned {po.ratio:.0%} of channels ({po.importance}): MACs {res.macs_before:,} -> {res.macs_after:,}, "
            f"parameters {res.params_before:,} -> {res.params_after:,}; "
            f"heads kept whole: {', '.join(res.excluded)}")  # fmt: skip
    module, how, summary = _fine_tune(res.module, po, train, ctx.work)
    after = finetune.top1(module, valid)
    if before is not None and after is not None:
        ctx.say(f"fine-tuned ({summary}): float top-1 {before:.1%} before pruning, {after:.1%} after "
                f"({len(valid.x)} held-back samples)")  # fmt: skip
    else:
        ctx.say(f"fine-tuned ({summary})")
    info = PruningInfo(
        ratio=po.ratio, importance=po.importance, macs_before=res.macs_before, macs_after=res.macs_after,
        params_before=res.params_before, params_after=res.params_after, excluded=res.excluded, fine_tune=how,
        fine_tune_summary=summary, float_accuracy_before=before, float_accuracy_after=after,
        accuracy_samples=0 if valid.y is None else len(valid.y),
    )  # fmt: skip
    return module, info


def _tp_version() -> str:
    try:
        return version("torch-pruning")
    except PackageNotFoundError:
        return "unknown"
