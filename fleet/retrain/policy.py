"""`retrain.yaml`: what re-trains a model, how, and what a candidate must pass. Validated, no I/O but reading it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge_runtime.errors import ConfigError, validation_message
from fleet.server.rollout_judge import Thresholds

_STRICT = ConfigDict(extra="forbid")


class Training(BaseModel):
    """The user's training command: any language; gets the data folder, the parent model and an output path."""

    model_config = _STRICT

    command: str = Field(min_length=1, max_length=4000, description="Command line with {data}, {model}, {output} "
                         "placeholders (also EDGE_TRAIN_DATA, EDGE_TRAIN_MODEL, EDGE_TRAIN_OUTPUT).")
    timeout_s: float = Field(default=3600, gt=0, le=7 * 86400, description="The command is killed past this.")
    where: Literal["server", "worker"] = Field(default="server", description="'server': the server's own worker "
                                               "runs it; 'worker': a `retrain worker` on another machine claims it.")
    source_model: Path = Field(description="The first parent's source model file (later parents: the model the "
                               "run that made them trained).")
    base_data: Path | None = Field(default=None, description="The parent's training data (.npz with x and y), "
                                   "referenced by digest in every snapshot and joined with the new samples.")
    cwd: Path | None = Field(default=None, description="Working folder of the command (default: the run's folder).")


class Triggers(BaseModel):
    """When a run starts by itself. Every condition that holds is recorded as a reason; none: by hand only."""

    model_config = _STRICT

    drift_devices: int | None = Field(default=None, ge=1, description="Drift events from at least N devices.")
    new_labels: int | None = Field(default=None, ge=1, description="At least K samples labelled since the last run.")
    field_accuracy_below: float | None = Field(default=None, gt=0, le=1, description="Mean field accuracy (device "
                                               "feedback) below this floor.")
    schedule_s: float | None = Field(default=None, gt=0, description="A run every this many seconds.")
    window_s: float = Field(default=3600, gt=0, description="Drift and field accuracy are read over this window.")
    min_new_labels: int = Field(default=1, ge=0, description="No automatic run with fewer new labelled samples "
                                "(drift alone has nothing to learn from).")
    cooldown_s: float = Field(default=3600, ge=0, description="No automatic run this soon after the last one.")


class Gates(BaseModel):
    """What a candidate must pass to be registered; a failure keeps the parent and records why."""

    model_config = _STRICT

    holdout: Path = Field(description="Fixed holdout: a folder per class of images (never trained on).")
    tolerance: float = Field(default=0.02, ge=0, le=1, description="Holdout accuracy may be this much below the "
                             "parent's.")
    field_share: float = Field(default=0.25, gt=0, lt=1, description="Share of the new labelled samples kept out "
                               "of training to compare candidate and parent on recent field data.")
    min_field_gain: float = Field(default=0.0, ge=0, le=1, description="The candidate must beat the parent on the "
                                  "field data by more than this.")
    golden: bool = Field(default=True, description="The candidate's golden outputs must reproduce on the server.")


class Canary(BaseModel):
    """The rollout a passing candidate gets (fleet.server.rollouts)."""

    model_config = _STRICT

    auto: bool = Field(default=False, description="Start the canary rollout at once; otherwise wait for an "
                       "operator's approval (`retrain approve RUN` or the dashboard).")
    canaries: list[str] = Field(default_factory=list, description="Canary devices (default: canary_percent).")
    canary_percent: float = Field(default=10, gt=0, le=100, description="Share of members as canaries.")
    waves: int = Field(default=1, ge=1, le=100, description="The other members in this many waves.")
    window_s: float = Field(default=60, ge=0, le=86400, description="Seconds the canaries are watched.")
    timeout_s: float = Field(default=300, gt=0, le=86400, description="Time each stage's devices have to update.")
    thresholds: Thresholds = Field(
        default_factory=lambda: Thresholds(max_confidence_drop=1.0),
        description="How much worse than the control group the canaries may be. The confidence check is off by "
        "default here: on shifted data the old model is often confidently wrong and the re-trained one less sure "
        "but right (the gates judged accuracy on the field data already). Given thresholds replace the whole set "
        "(the rollout judge's own defaults, confidence included, for what they leave out).")


class RetrainPolicy(BaseModel):
    """One model's re-training loop."""

    model_config = _STRICT

    model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Registered model name.")
    target: str = Field(pattern=r"^group:[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="group:NAME it serves.")
    training: Training
    triggers: Triggers = Field(default_factory=Triggers)
    gates: Gates
    canary: Canary = Field(default_factory=Canary)
    use_teacher_labels: bool = Field(default=False, description="Train on teacher labels too (marked as such in "
                                     "the snapshot); a person's or an import's label always wins.")
    sign_key: Path | None = Field(default=None, description="Ed25519 key the candidate is signed with (default: "
                                  "the server's operator key).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Convert options changed from the "
                                      "parent's recorded recipe.")

    @model_validator(mode="after")
    def _paths(self) -> RetrainPolicy:
        if self.triggers.new_labels is not None and self.triggers.new_labels < self.triggers.min_new_labels:
            raise ValueError("triggers.new_labels is below triggers.min_new_labels: it could never fire")
        return self


def load_policy(path: Path) -> RetrainPolicy:
    """Read and validate ``retrain.yaml``; relative paths are taken from the file's folder."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        pol = RetrainPolicy.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(f"invalid {path.name}: {validation_message(exc, root='retrain')}") from None
    base = path.resolve().parent
    t = pol.training
    fixed = {"source_model": base / t.source_model, "base_data": None if t.base_data is None else base / t.base_data,
             "cwd": None if t.cwd is None else base / t.cwd}
    return pol.model_copy(update={
        "training": t.model_copy(update=fixed),
        "gates": pol.gates.model_copy(update={"holdout": base / pol.gates.holdout}),
        "sign_key": None if pol.sign_key is None else base / pol.sign_key})
