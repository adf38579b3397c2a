"""`edge-runtime registry export NAME VERSION --mlflow URI`: register a fleet registry version in an MLflow model
registry. The signed package archive and its lineage (JSON) become the artifacts of an MLflow run; the model
version carries the lineage as ``edge.*`` tags and, with ``--alias``, an alias. Exporting the same package
(same sha256) again finds the version already there instead of making another."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EXPERIMENT = "edge-runtime"
MAX_TAG = 5000  # MLflow's limit on a tag value


def lineage_tags(doc: Mapping[str, Any]) -> dict[str, str]:
    """The registry version document as flat ``edge.*`` string tags (absent values left out)."""
    lin = doc.get("lineage") or {}
    src, cal, guard = lin.get("source") or {}, lin.get("calibration") or {}, lin.get("guard") or {}
    mlf = lin.get("mlflow") or {}
    tags = {
        "edge.name": doc["name"], "edge.version": doc["version"], "edge.package_sha256": doc["sha256"],
        "edge.package_size": doc.get("size"), "edge.profile": doc.get("profile"), "edge.format": doc.get("format"),
        "edge.signer": doc.get("signer"), "edge.registered_by": doc.get("registered_by"),
        "edge.parent": doc.get("parent"), "edge.model_sha256": (lin.get("model_file") or {}).get("sha256"),
        "edge.source_format": src.get("format"), "edge.source_sha256": src.get("sha256"),
        "edge.calibration_fingerprint": cal.get("fingerprint"), "edge.validation_sha256": lin.get("validation_sha256"),
        "edge.git_commit": lin.get("git_commit"), "edge.git_dirty": lin.get("git_dirty"),
        "edge.training_command": lin.get("training_command"), "edge.dataset_snapshot": lin.get("dataset_snapshot"),
        "edge.source_model_uri": f"models:/{mlf['name']}/{mlf['version']}" if mlf else None,
        "edge.source_run_id": mlf.get("run_id"), "edge.guard_passed": guard.get("passed"),
        "edge.top1_agreement": guard.get("top1_agreement"),
        "edge.tools": ", ".join(f"{k} {v}" for k, v in sorted((lin.get("tools") or {}).items())) or None,
    }  # fmt: skip
    return {k: (json.dumps(v) if isinstance(v, bool) else str(v))[:MAX_TAG] for k, v in tags.items() if v is not None}


def _existing(client: Any, name: str, sha256: str) -> Any:
    quoted = name.replace("'", "\\'")
    for mv in client.search_model_versions(f"name = '{quoted}'"):
        if (mv.tags or {}).get("edge.package_sha256") == sha256:
            return mv
    return None


def _ensure_model(client: Any, model: str, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(model, description=f"edge-runtime packages of {name}")


def export(doc: Mapping[str, Any], archive: Path, tracking: str, name: str | None = None,
           alias: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Register ``archive`` (the version ``doc`` describes) in the MLflow registry at ``tracking``."""
    from converters.mlflow_source import import_mlflow

    mlflow = import_mlflow()
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    model = name or doc["name"]
    tags = lineage_tags(doc)
    try:
        _ensure_model(client, model, doc["name"])
        mv = _existing(client, model, doc["sha256"])
        created = mv is None
        if mv is None:
            exp = client.get_experiment_by_name(EXPERIMENT)
            exp_id = exp.experiment_id if exp is not None else client.create_experiment(EXPERIMENT)
            run = client.create_run(exp_id, run_name=f"{doc['name']}-{doc['version']}", tags=tags)
            client.log_artifact(run.info.run_id, str(archive), artifact_path="package")
            client.log_dict(run.info.run_id, dict(doc), "package/lineage.json")
            client.set_terminated(run.info.run_id)
            mv = client.create_model_version(model, source=f"{run.info.artifact_uri}/package",
                                             run_id=run.info.run_id, tags=tags)  # fmt: skip
        if alias:
            client.set_registered_model_alias(model, alias, mv.version)
    except MlflowException as exc:
        from edge_runtime.errors import ConfigError

        raise ConfigError(f"MLflow {tracking}: {str(exc.message).splitlines()[0][:300]}") from None
    return {"name": model, "version": str(mv.version), "run_id": mv.run_id, "alias": alias, "created": created,
            "tags": tags}  # fmt: skip
