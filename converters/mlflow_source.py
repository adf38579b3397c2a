"""`edge-runtime convert models:/NAME@ALIAS` (or ``models:/NAME/VERSION``): the source model comes from an MLflow
model registry (``--mlflow-uri`` or $MLFLOW_TRACKING_URI), pinned to the version the URI resolves to. Needs the
[mlflow] extra; MLflow is imported only here."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConversionError, MissingDependencyError
from edge_runtime.package.provenance import MlflowSource

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]{1,256})(?:@(?P<alias>[^/@]{1,256})|/(?P<version>[0-9]{1,12}))$")
# Files of an MLflow model folder that are not the model itself.
_META = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "input_example.json",
         "serving_input_example.json", "registered_model_meta"}  # fmt: skip


def is_model_uri(source: object) -> bool:
    return str(source).startswith("models:")


def import_mlflow() -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline first: MLflow 3 reports usage otherwise
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # convert prints its own progress
    try:
        import mlflow
        from mlflow import MlflowClient  # noqa: F401 - the part used
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in ("mlflow", "sqlalchemy", "alembic"):
            raise MissingDependencyError(f"{exc.name} (needed for MLflow registries)", "mlflow") from None
        raise
    return mlflow


def tracking_uri(given: str | None) -> str:
    uri = given or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise ConversionError("an MLflow registry needs --mlflow-uri URI or $MLFLOW_TRACKING_URI")
    return uri


def _model_file(folder: Path, uri: str) -> Path:
    """The model inside a downloaded MLflow model folder: a SavedModel folder, or the one model file."""
    from converters.sources import SUFFIXES

    if (folder / "saved_model.pb").is_file():
        return folder
    saved = [p.parent for p in folder.rglob("saved_model.pb")]
    files = [p for p in folder.rglob("*") if p.is_file() and p.name not in _META and p.suffix.lower() in SUFFIXES]
    found = saved + files
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(folder)) for p in found) or "none"
        raise ConversionError(f"{uri}: expected one model file ({', '.join(sorted(SUFFIXES))}) in the MLflow "
                              f"model's artifacts, found {names}")  # fmt: skip
    return found[0]


def fetch(uri: str, dest: Path, mlflow_uri: str | None) -> tuple[Path, MlflowSource]:
    """Download the model version ``uri`` names into ``dest``: the model file and what it was (version, run)."""
    m = MODEL_URI.match(uri)
    if m is None:
        raise ConversionError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    where = tracking_uri(mlflow_uri)
    client = mlflow.MlflowClient(tracking_uri=where, registry_uri=where)
    name = m.group("name")
    try:
        if m.group("alias"):
            mv = client.get_model_version_by_alias(name, m.group("alias"))
        else:
            mv = client.get_model_version(name, m.group("version"))
        dest.mkdir(parents=True, exist_ok=True)
        # the version's own artifact location: a models:/ URI here would resolve through MLflow's global
        # registry URI (default ./mlflow.db), not the one given
        source = client.get_model_version_download_uri(name, mv.version)
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=where)
    except MlflowException as exc:
        raise ConversionError(f"{uri}: {str(exc.message).splitlines()[0][:300]}") from None
    return _model_file(Path(path), uri), MlflowSource(model_uri=uri, name=name, version=str(mv.version),
                                                       run_id=mv.run_id or None)  # fmt: skip


def pinned(src: MlflowSource) -> str:
    """The URI of exactly the version a conversion used (an alias may have moved since)."""
    return f"models:/{src.name}/{src.version}"
