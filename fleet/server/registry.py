"""The model registry: versions with their lineage, aliases moved atomically, promote and revert.

A version is a signed package archive kept on disk under its sha256 (``data_dir/packages``) plus one row with
what the package's manifest says about where it came from (source, calibration and validation digests, the
guard's report, tool versions) and what the registering operator adds (parent version, the full convert
recipe, the training code's git commit and dirty flag, training command, dataset snapshot).

Promote moves an alias (``production`` by default) to a version and publishes the signed desired document for the
alias's target through the broker (package chunks first, retained); the alias's old version moves to
``previous``. Revert moves the alias back to where it stood before its last move, with a signed rollback
document. A group target also clears the per-device documents of the group's members: a device's own document
overrides its group's, so without that a group promote or revert would change nothing on those devices. Moves
and delivery live in ``fleet.server.moves`` (intent, publish, outcome: safe with two operators at once).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package.archive import read_archive_head
from edge_runtime.package.store import read_archive_manifest
from edge_runtime.update.transfer import DEFAULT_CHUNK, build_meta
from fleet.server.auth import User, audit
from fleet.server.db import tables as t
from fleet.server.errors import NotRegistered, RegistryError

PRODUCTION, PREVIOUS = "production", "previous"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class LineageExtra(BaseModel):
    """What the registering operator adds to the manifest's lineage (the manifest cannot know these)."""

    model_config = ConfigDict(extra="forbid")

    parent: str | None = Field(default=None, max_length=64, description="Parent version of the same model.")
    recipe: dict[str, Any] = Field(default_factory=dict, description="Every `convert` option, to re-run it.")
    git_commit: str | None = Field(default=None, max_length=64, description="Training code's git commit.")
    git_dirty: bool | None = Field(default=None, description="Uncommitted changes in the training code.")
    training_command: str | None = Field(default=None, max_length=4000, description="Re-training command.")
    dataset_snapshot: str | None = Field(default=None, max_length=200, description="Dataset snapshot id.")
    validation_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$",
                                          description="Digest of the validation data.")


def package_path(data_dir: Path, sha256: str) -> Path:
    return data_dir / "packages" / f"{sha256}.erpkg"


def _signer(archive: Path) -> str:
    head = read_archive_head(archive)
    if head.signature_raw is None:
        raise RegistryError("the package is not signed: devices would refuse it (edge-runtime sign)")
    try:
        return str(json.loads(head.signature_raw)["key_id"])
    except (ValueError, KeyError, TypeError):
        raise RegistryError("the package's signature.json is malformed") from None


def _recorded(manifest: Any) -> dict[str, Any]:
    """What the package's recorded recipe (the manifest's provenance block) says, in LineageExtra's terms."""
    prov = manifest.provenance
    if prov is None:
        return {}
    val = prov.inputs.get("validation")
    return {"recipe": prov.model_dump(mode="json"),
            "git_commit": prov.git.commit if prov.git else None, "git_dirty": prov.git.dirty if prov.git else None,
            "validation_sha256": val.sha256 if val else None}  # fmt: skip


def lineage_of(manifest: Any, extra: LineageExtra) -> dict[str, Any]:
    """The lineage record: the manifest's own provenance (its recorded recipe included) plus what the operator
    added, which overrides the recipe's git and validation fields where given."""
    q = manifest.quantization
    added = extra.model_dump(mode="json", exclude={"parent"})
    recorded = _recorded(manifest)
    merged = {k: (v if v not in (None, {}) else recorded.get(k, v)) for k, v in added.items()}
    model_file = next((f.sha256 for f in manifest.files if f.path == manifest.model_file), None)
    return {
        "source": manifest.source.model_dump(mode="json") if manifest.source else None,
        "calibration": {"method": q.calibration_method, "samples": q.calibration_samples,
                        "fingerprint": q.calibration_fingerprint},
        "quantization": {"precision": q.precision, "method": q.method, "remedies": list(q.remedies)},
        "guard": manifest.accuracy.model_dump(mode="json") if manifest.accuracy else None,
        "tools": dict(manifest.tools), "created": manifest.created,
        "model_file": {"path": manifest.model_file, "sha256": model_file},
        "mlflow": manifest.provenance.mlflow.model_dump(mode="json") if manifest.provenance and
        manifest.provenance.mlflow else None,
        **merged,
    }


def register(engine: Any, data_dir: Path, user: User, upload_path: Path, extra: LineageExtra) -> dict[str, Any]:
    """Register the archive at ``upload_path`` (moved into the store); the same bytes again are a no-op."""
    if not user.is_operator:
        raise PermissionError("operator role required")
    try:
        manifest = read_archive_manifest(upload_path)
        signer = _signer(upload_path)
        meta = build_meta(upload_path, DEFAULT_CHUNK)
    except RegistryError:
        raise
    except (EdgeRuntimeError, OSError, ValueError) as exc:
        raise RegistryError(f"not a readable package archive: {exc}") from None
    with engine.begin() as conn:
        row = conn.execute(select(t.model_versions).where(t.model_versions.c.name == manifest.name,
                                                          t.model_versions.c.version == manifest.version)).first()
        if row is not None:
            if row.sha256 != meta.sha256:
                raise RegistryError(f"{manifest.name} {manifest.version} is registered with other bytes "
                                    f"(sha256 {row.sha256[:12]}); give the new package a new version")
            return version_doc(row._mapping)
        if extra.parent is not None and conn.execute(select(t.model_versions.c.version).where(
                t.model_versions.c.name == manifest.name, t.model_versions.c.version == extra.parent)).first() is None:
            raise NotRegistered(f"parent {manifest.name} {extra.parent} is not registered")
        dest = package_path(data_dir, meta.sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload_path, dest) if not dest.exists() else upload_path.unlink()
        values = {"name": manifest.name, "version": manifest.version, "sha256": meta.sha256, "size": meta.size,
                  "package_id": meta.package_id, "profile": manifest.profile, "format": manifest.format,
                  "signer": signer, "registered_by": user.name, "registered": time.time(), "parent": extra.parent,
                  "lineage": lineage_of(manifest, extra), "meta": meta.model_dump(mode="json", by_alias=True)}
        conn.execute(insert(t.model_versions).values(**values))
    audit(engine, user.name, "register", f"{manifest.name} {manifest.version}", "done",
          {"sha256": meta.sha256, "size": meta.size})
    return version_doc(values)


def version_doc(row: Any) -> dict[str, Any]:
    return {k: row[k] for k in ("name", "version", "sha256", "size", "package_id", "profile", "format", "signer",
                                "registered_by", "registered", "parent", "lineage")}


def models(conn: Any) -> list[dict[str, Any]]:
    v = t.model_versions
    rows = conn.execute(select(v.c.name, func.count(), func.max(v.c.registered)).group_by(v.c.name).order_by(v.c.name))
    aliases = _aliases(conn, None)
    return [{"name": n, "versions": c, "latest_registered": last, "aliases": aliases.get(n, {})}
            for n, c, last in rows]


def _aliases(conn: Any, name: str | None) -> dict[str, dict[str, Any]]:
    q = select(t.model_aliases)
    if name is not None:
        q = q.where(t.model_aliases.c.name == name)
    out: dict[str, dict[str, Any]] = {}
    for r in conn.execute(q):
        out.setdefault(r.name, {})[r.alias] = {"version": r.version, "target": r.target, "moved_by": r.moved_by,
                                               "moved": r.moved}
    return out


def model(conn: Any, name: str) -> dict[str, Any]:
    rows = conn.execute(select(t.model_versions).where(t.model_versions.c.name == name)
                        .order_by(t.model_versions.c.registered)).all()
    if not rows:
        raise NotRegistered(f"no model {name!r} in the registry")
    hist = conn.execute(select(t.alias_history).where(t.alias_history.c.name == name)
                        .order_by(t.alias_history.c.id)).all()
    return {"name": name, "versions": [version_doc(r._mapping) for r in rows],
            "aliases": _aliases(conn, name).get(name, {}),
            "history": [{k: h._mapping[k] for k in ("alias", "version", "previous", "target", "user", "ts",
                                                    "action", "state", "error")} for h in hist]}


def get_version(conn: Any, name: str, version: str) -> Any:
    row = conn.execute(select(t.model_versions).where(t.model_versions.c.name == name,
                                                      t.model_versions.c.version == version)).first()
    if row is None:
        raise NotRegistered(f"{name} {version} is not registered")
    return row


def lineage(conn: Any, name: str, version: str, depth: int = 100) -> list[dict[str, Any]]:
    """``version`` and its ancestors, newest first (bounded: a parent cycle cannot loop)."""
    chain, seen, cur = [], set(), version
    while cur is not None and cur not in seen and len(chain) < depth:
        seen.add(cur)
        row = get_version(conn, name, cur)
        chain.append(version_doc(row._mapping))
        cur = row.parent
    return chain
