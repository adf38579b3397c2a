"""Structured (channel) pruning of a PyTorch module with Torch-Pruning's dependency graph.

Only removing whole channels makes a model faster on the CPUs we target: onnxruntime gains nothing from
unstructured sparsity and XNNPACK's sparse path is float-only. The heads (the last weighted layers before each
model output: a classifier's Linear, a detector's box and score convolutions) keep every output channel, so the
model's outputs keep their shape and meaning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from converters.optimize import PruningError
from edge_runtime.errors import MissingDependencyError

Importance = Literal["l1", "group"]


@dataclass(frozen=True)
class PruneResult:
    """A pruned module and what it cost to run, before and after."""

    module: Any
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    excluded: tuple[str, ...]


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as exc:
        raise MissingDependencyError("torch-pruning (for --prune)", "prune") from exc
    return torch_pruning


def _weighted(torch: Any, module: Any) -> bool:
    return isinstance(module, torch.nn.Conv1d | torch.nn.Conv2d | torch.nn.Conv3d | torch.nn.Linear)


def output_heads(module: Any, example: Any) -> list[str]:
    """Names of the weighted layers whose outputs reach a model output through no other weighted layer.

    Found on the autograd graph of one forward pass: from each output, walk back until a tensor made by a
    Conv/Linear is met; those layers are the heads.
    """
    import torch

    made_by: dict[Any, str] = {}
    hooks = []
    for name, sub in module.named_modules():
        if _weighted(torch, sub):
            hooks.append(sub.register_forward_hook(lambda m, i, o, n=name: made_by.__setitem__(o.grad_fn, n)))
    try:
        with torch.enable_grad():
            out = module(example.requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    outs = _flat(out)
    heads: list[str] = []
    seen: set[Any] = set()
    stack = [o.grad_fn for o in outs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made_by:
            if made_by[fn] not in heads:
                heads.append(made_by[fn])
            continue
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return heads


def _flat(out: Any) -> list[Any]:
    """A module's outputs as a list: a tensor, a tuple/list of them, or a dict of them."""
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, list | tuple) else [out]


def _shapes(module: Any, example: Any) -> list[tuple[int, ...]]:
    import torch

    with torch.no_grad():
        out = module(example)
    outs = _flat(out)
    return [tuple(o.shape) for o in outs if isinstance(o, torch.Tensor)]


def _importance(tp: Any, kind: Importance) -> Any:
    if kind == "l1":  # the L1 norm of each channel of the layer being pruned (Li et al. 2017)
        return tp.importance.MagnitudeImportance(p=1, normalizer=None, group_reduction="first")
    # the L2 norm over every coupled layer of the group, normalised (DepGraph, Fang et al. 2023)
    return tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean", normalizer="mean")


def count(module: Any, example: Any) -> tuple[int, int]:
    """(MACs, parameters) of one inference on ``example``."""
    tp = _torch_pruning()
    macs, params = tp.utils.count_ops_and_params(module, example)
    return int(macs), int(params)


def prune(module: Any, input_shape: Sequence[int], ratio: float, importance: Importance = "l1") -> PruneResult:
    """Remove ``ratio`` of the channels of every prunable layer of ``module`` (changed in place, returned)."""
    import torch

    tp = _torch_pruning()
    if not isinstance(module, torch.nn.Module) or isinstance(module, torch.jit.ScriptModule):
        raise PruningError("pruning needs a Python nn.Module saved with torch.save(model), not TorchScript: "
                           "TorchScript has no editable layers")  # fmt: skip
    if not 0 < ratio < 1:
        raise PruningError(f"--prune takes a share of channels between 0 and 1 (e.g. 0.3), got {ratio}")
    module.eval()
    example = torch.zeros(*input_shape)
    heads = output_heads(module, example.clone())
    named = dict(module.named_modules())
    macs0, params0 = count(module, example)
    before = _shapes(module, example)
    try:
        pruner = tp.pruner.MetaPruner(
            module, example, importance=_importance(tp, importance), pruning_ratio=ratio,
            ignored_layers=[named[h] for h in heads], global_pruning=False,
        )  # fmt: skip
        pruner.step()
    except Exception as exc:  # Torch-Pruning raises many types for graphs it cannot trace
        raise PruningError(f"Torch-Pruning could not prune this model: {str(exc).splitlines()[0][:300]}") from exc
    after = _shapes(module, example)
    if after != before:
        raise PruningError(f"pruning changed the model's output shapes {before} -> {after}: its heads could not "
                           "be told from the graph (outputs must be tensors or tuples of tensors)")  # fmt: skip
    macs1, params1 = count(module, example)
    if params1 >= params0:
        raise PruningError(f"nothing could be pruned at ratio {ratio}: every layer is a head or too small")
    return PruneResult(module, macs0, macs1, params0, params1, tuple(heads))
