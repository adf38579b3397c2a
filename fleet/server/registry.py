"""The model registry: versions with their lineage, aliases moved atomically, promote and revert.

A version is a signed package archive kept on disk under its sha256 (``data_dir/packages``) plus one row with
what the package's manifest says about where it came from (source, calibration and validation digests, the
guard's report, tool versions) and what the registering operator adds (parent version, the full convert
recipe, the training code's git commit and dirty flag, training command, dataset snapshot).

Promote moves an alias (``production`` by default) to a version and publishes the signed desired document for the
alias's target through the broker (package chunks first, retained); the alias's old version moves to
``previous``. Revert moves the alias back to where it stood before its last move, with a signed rollback
document. A group target also clears the per-device documents of the group's members: a device's own document
overrides its group's, so without that a group promote or revert would change nothing on those devices.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, insert, select, update

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.package.archive import read_archive_head
from edge_runtime.package.store import read_archive_manifest
from edge_runtime.update.transfer import DEFAULT_CHUNK, ChunkMeta, build_meta
from fleet.publish import Published, desired_topic, parse_target, set_desired_many, upload
from fleet.server.auth import User, audit
from fleet.server.db import tables as t
from fleet.server.errors import ActionRefused, NotRegistered, RegistryError

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
                                                    "action")} for h in hist]}


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


def _group_members(conn: Any, group: str) -> list[str]:
    return sorted(r.id for r in conn.execute(select(t.devices.c.id, t.devices.c.groups))
                  if group in (r.groups or []))


def deliver(actions: Any, data_dir: Path, row: Any, targets: list[str], rollback: bool,
            members: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Chunks (retained), one signed desired document per target, then clear superseded per-device documents."""
    link, key = actions.signing_link()
    archive = package_path(data_dir, row.sha256)
    if not archive.is_file():
        raise RegistryError(f"the stored package of {row.name} {row.version} is missing ({archive})")
    try:
        upload(link, actions.topics, archive, DEFAULT_CHUNK)
        pub = Published(row.name, row.version, row.profile, ChunkMeta.model_validate(row.meta))
        set_desired_many(link, actions.topics, pub, targets, key, rollback=rollback)
        cleared = []
        for dev in members:  # after the group's document: each member then resolves to it
            h = link.publish(desired_topic(actions.topics, "device", dev), b"", qos=1, retain=True)
            if not h.wait(10):
                raise RegistryError(f"the broker did not acknowledge clearing {dev}'s own document")
            cleared.append(dev)
    except EdgeRuntimeError as exc:
        if isinstance(exc, RegistryError):
            raise
        raise ActionRefused(f"publishing failed: {exc}") from None
    return cleared


def move(engine: Any, actions: Any, data_dir: Path, user: User, name: str, version: str | None,
         alias: str = PRODUCTION, target: str | None = None, revert: bool = False) -> dict[str, Any]:
    """Promote (``version`` given) or revert ``alias``; publishes when the alias has a target. Audited."""
    what = "revert" if revert else "promote"
    try:
        if not user.is_operator:
            raise PermissionError("operator role required")
        with engine.begin() as conn:
            out = _move_in(conn, actions, data_dir, user, name, version, alias, target, revert)
    except (PermissionError, RegistryError, ActionRefused) as exc:
        audit(engine, user.name, what, f"{name}@{alias}", "refused", {"reason": str(exc)})
        raise
    audit(engine, user.name, what, f"{name}@{alias}", "done", out)
    return out


def _move_in(conn: Any, actions: Any, data_dir: Path, user: User, name: str, version: str | None, alias: str,
             target: str | None, revert: bool) -> dict[str, Any]:
    a = t.model_aliases
    cur = conn.execute(select(a).where(a.c.name == name, a.c.alias == alias).with_for_update()).first()
    if revert:
        last = conn.execute(select(t.alias_history).where(t.alias_history.c.name == name,
                                                          t.alias_history.c.alias == alias)
                            .order_by(t.alias_history.c.id.desc()).limit(1)).first()
        if cur is None or last is None or last.previous is None:
            raise RegistryError(f"{name}@{alias} has no earlier version to revert to")
        version = last.previous
    assert version is not None
    row = get_version(conn, name, version)
    target = target or (cur.target if cur is not None else None)
    if target is not None and parse_target(target)[1] == "":
        raise RegistryError(f"bad target {target!r}: a device id or group:NAME")
    previous = cur.version if cur is not None else None
    now = time.time()
    _set_alias(conn, name, alias, version, target, user.name, now)
    if alias == PRODUCTION and previous is not None and previous != version:
        _set_alias(conn, name, PREVIOUS, previous, None, user.name, now)
    conn.execute(insert(t.alias_history).values(name=name, alias=alias, version=version, previous=previous,
                                                target=target, user=user.name, ts=now,
                                                action="revert" if revert else "promote"))
    cleared: list[str] = []
    if target is not None:  # publish inside the transaction: a failed publication moves no alias
        scope, tname = parse_target(target)
        members = _group_members(conn, tname) if scope == "group" else []
        cleared = deliver(actions, data_dir, row, [target], revert, members)
    return {"name": name, "alias": alias, "version": version, "previous": previous, "target": target,
            "published": target is not None, "cleared_device_documents": cleared}


def _set_alias(conn: Any, name: str, alias: str, version: str, target: str | None, user: str, now: float) -> None:
    a = t.model_aliases
    values = {"version": version, "moved_by": user, "moved": now}
    if target is not None or alias == PREVIOUS:
        values["target"] = target
    done = conn.execute(update(a).where(a.c.name == name, a.c.alias == alias).values(**values))
    if done.rowcount == 0:
        conn.execute(insert(a).values(name=name, alias=alias, **{"target": target, **values}))
