"""Optimisation beyond int8 for PyTorch sources: structured (channel) pruning with Torch-Pruning, fine-tuning
(built in, or the user's training command), and the candidates `edge-runtime bench --choose` measures.

``prune`` removes channels; ``finetune`` trains the pruned module; ``stage`` hooks both into the conversion
pipeline (``convert --prune``); ``choose`` builds the candidate packages and writes the fastest that keeps accuracy.
torch and torch_pruning are imported inside the functions that need them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge_runtime.errors import ConversionError


class PruningError(ConversionError):
    """Pruning cannot be done as asked (not a PyTorch module, a graph Torch-Pruning cannot trace, a failed command)."""


NEEDS_TORCH = (
    "pruning needs a PyTorch source (a whole module saved with torch.save(model), .pt/.pth), not a {fmt} model: "
    "prune the PyTorch model you trained this one from, or rebuild it in PyTorch"
)



class PruneOptions(BaseModel):
    """How to prune before converting (`convert --prune RATIO ...`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ratio: float = Field(gt=0, lt=1, description="Share of channels to remove from each prunable layer.")
    importance: Literal["l1", "group"] = Field(default="l1", description="Channel importance: L1 or group norm.")
    fine_tune_epochs: int = Field(default=3, ge=0, le=1000, description="Built-in fine-tune epochs (0: none).")
    learning_rate: float = Field(default=1e-3, gt=0, lt=1, description="Built-in fine-tune learning rate (Adam).")
    train_cmd: str | None = Field(default=None, description="The user's training command (see finetune.py).")
    train_timeout_s: float | None = Field(default=None, gt=0, description="Most seconds the training command may run.")


__all__ = ["NEEDS_TORCH", "PruneOptions", "PruningError"]
