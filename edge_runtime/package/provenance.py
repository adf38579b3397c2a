"""The manifest's ``provenance`` block: the recorded conversion recipe, so a package can be re-made and checked.

The converter writes it (converters.recipe); the registry reads it for a version's lineage; the device only
carries it (nothing on the device acts on it). Optional: packages without it still load. Config models do no I/O.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_STRICT = ConfigDict(extra="forbid", frozen=True)
RECIPE_VERSION = 1


class InputDigest(BaseModel):
    """One input of the conversion: the path as the user gave it and the digest of what it held then."""

    model_config = _STRICT

    path: str = Field(max_length=4096, description="Path (or URI) as given to `convert`.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the file, or of a folder's files.")


class GitState(BaseModel):
    """The git repository the source model lives in, when it is in one."""

    model_config = _STRICT

    commit: str = Field(pattern=r"^[0-9a-f]{40,64}$", description="`git rev-parse HEAD`.")
    dirty: bool = Field(description="`git status --porcelain` listed changes.")


class MlflowSource(BaseModel):
    """The MLflow registry version the source model was taken from (`convert models:/NAME@ALIAS`)."""

    model_config = _STRICT

    model_uri: str = Field(max_length=1000, description="The models:/ URI as given.")
    name: str = Field(max_length=256, description="Registered model name.")
    version: str = Field(max_length=64, description="The model version the URI resolved to.")
    run_id: str | None = Field(default=None, max_length=64, description="The run that logged it.")


class Provenance(BaseModel):
    """How this package was made: every `convert` option, the digest of each input, and where the source was."""

    model_config = _STRICT

    recipe_version: int = Field(default=RECIPE_VERSION, description="Version of the recipe layout.")
    options: dict[str, Any] = Field(description="Every `convert` option needed to re-run it (JSON, normalised).")
    inputs: dict[str, InputDigest] = Field(
        default_factory=dict, description="source, calibration, validation, labels, anchors, profile: path + digest."
    )
    workdir: str | None = Field(default=None, max_length=4096, description="Where `convert` ran: relative paths "
                                "in options and inputs are relative to it.")
    git: GitState | None = Field(default=None, description="Git commit and dirty flag of the source's repository.")
    mlflow: MlflowSource | None = Field(default=None, description="The MLflow model version it came from.")
    not_reproducible: tuple[str, ...] = Field(
        default=(), description="Why the recipe alone cannot re-run it (e.g. data given as a Python object)."
    )
