"""Manifest sections about optimisation beyond int8: the channel pruning done before conversion (`convert
--prune`) and the table `bench --choose` picked the package from. Both optional; config models do no I/O."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", frozen=True)


class PruningInfo(BaseModel):
    """Structured (channel) pruning done before conversion (`convert --prune`): what was removed and what it cost."""

    model_config = _STRICT

    ratio: float = Field(ge=0, lt=1, description="Share of channels removed from each prunable layer.")
    importance: Literal["l1", "group"] = Field(description="Channel importance: L1 norm or group (coupled) norm.")
    macs_before: int = Field(ge=0, description="Multiply-accumulates of one inference before pruning.")
    macs_after: int = Field(ge=0, description="Multiply-accumulates after pruning.")
    params_before: int = Field(ge=0, description="Parameters before pruning.")
    params_after: int = Field(ge=0, description="Parameters after pruning.")
    excluded: tuple[str, ...] = Field(default=(), description="Layers kept whole (classifier and detection heads).")
    fine_tune: Literal["builtin", "command", "none"] = Field(description="How the pruned model was fine-tuned.")
    fine_tune_summary: str = Field(description="One line: epochs, samples, loss or the training command.")
    float_accuracy_before: float | None = Field(default=None, description="Labelled top-1 of the unpruned model.")
    float_accuracy_after: float | None = Field(default=None, description="Labelled top-1 after pruning+fine-tune.")
    accuracy_samples: int = Field(default=0, ge=0, description="Labelled samples the two accuracies are on.")


class SelectionRow(BaseModel):
    """One candidate `bench --choose` measured."""

    model_config = _STRICT

    candidate: str = Field(description="Candidate id: format/precision/prune ratio/threads.")
    format: str = Field(description="onnx or tflite.")
    precision: str = Field(description="int8 or float32.")
    prune_ratio: float = Field(ge=0, lt=1, description="Pruning ratio of the candidate (0: unpruned).")
    threads: int = Field(ge=1, description="Threads it was measured with.")
    p50_ms: float | None = Field(default=None, description="Median latency here (None: not measured).")
    top1_accuracy: float | None = Field(default=None, description="Labelled top-1 accuracy on the validation data.")
    size_bytes: int | None = Field(default=None, description="Model file size.")
    within_budget: bool = Field(description="Whether its accuracy is within the profile's budget.")
    note: str | None = Field(default=None, description="Why it was excluded or skipped.")


class SelectionInfo(BaseModel):
    """Why this package was chosen (`bench --choose`): every candidate measured and the rule applied."""

    model_config = _STRICT

    rule: str = Field(description="The rule, in one line (fastest p50 within the accuracy budget).")
    reference_accuracy: float | None = Field(default=None, description="Accuracy the budget is counted from.")
    max_accuracy_drop: float = Field(ge=0, le=1, description="The profile's budget.")
    chosen: str = Field(description="The candidate id written as this package.")
    threads: int = Field(ge=1, description="Threads the chosen candidate was fastest with (set it on the device).")
    machine: str = Field(description="Where the candidates were measured, with the load average.")
    rows: tuple[SelectionRow, ...] = Field(min_length=1, description="Every candidate, chosen one included.")


__all__ = ["PruningInfo", "SelectionInfo", "SelectionRow"]
