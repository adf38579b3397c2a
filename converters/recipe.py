"""The recorded conversion recipe: what `convert` writes into a package's ``provenance`` block, and how to run the
same conversion again on a new source model.

A recipe is a JSON-able dict (the manifest's ``provenance`` block, see edge_runtime.package.provenance)::

    {"recipe_version": 1,
     "options": {"source": "models/cnn.onnx", "profile": "x86-laptop", "calibration": "data/calib",
                 "format": "onnx", "precision": "int8", "sign_key": "keys/release.key", ...},   # every option
     "inputs": {"source": {"path": "models/cnn.onnx", "sha256": "..."},
                "calibration": {"path": "data/calib", "sha256": "..."}, ...},   # path as given + digest
     "workdir": "/home/me/project",          # relative paths above are relative to it
     "git": {"commit": "...", "dirty": false},  # the source model's repository, when it is in one
     "mlflow": {"model_uri": "models:/cnn@production", "name": "cnn", "version": "3", "run_id": "..."},
     "not_reproducible": []}                 # why the recipe alone cannot re-run it, if so

The Python API, used by re-training:

- :func:`recipe_of` (a Manifest, a Package, a package folder or ``.erpkg`` archive, or a recipe dict) -> the dict.
- :func:`convert_with_recipe` runs the same conversion (same options; signing key by the path recorded in the
  recipe, or ``overrides={"sign_key": Path(...)}``, its passphrase from the recorded ``passphrase_file`` or
  $EDGE_RUNTIME_KEY_PASSPHRASE) on ``source``, writing the package folder ``output``; calibration and validation
  data default to the recorded paths. ``overrides`` replaces any option by name (``version``, ``name``,
  ``force``, ``archive``, ``max_samples``, ``sign_key``...). Raises ConversionError for a recipe it cannot use.
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_runtime.errors import ConversionError, first_validation_error
from edge_runtime.fsutil import tree_sha256
from edge_runtime.package.provenance import GitState, InputDigest, Provenance

# Options that say where the output goes, not how it is made; and those recorded by other means.
_OUTPUT = {"out", "force", "archive"}
_SPECIAL = {"sign_key", "given_files", "extra_files", "mlflow", "mlflow_uri", "calibration", "validation", "profile",
            "labels"}  # fmt: skip
ALWAYS_TOOLS = ("numpy", "onnx", "onnxruntime")


def tool_versions(names: tuple[str, ...] = ALWAYS_TOOLS) -> dict[str, str]:
    """Python's version and each named distribution's (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def git_state(path: Path) -> GitState | None:
    """Commit and dirty flag of the git repository holding ``path``; None when it is in none (or git is absent)."""
    where = path if path.is_dir() else path.parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,  # noqa: S603,S607
                              text=True, timeout=30)  # fmt: skip
        if head.returncode != 0:
            return None
        status = subprocess.run(["git", "-C", str(where), "status", "--porcelain"], capture_output=True,  # noqa: S603,S607
                                text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    if status.returncode != 0:
        return None
    try:
        return GitState(commit=head.stdout.strip(), dirty=bool(status.stdout.strip()))
    except ValidationError:
        return None


def _digest(path: str | Path) -> InputDigest:
    return InputDigest(path=str(path), sha256=tree_sha256(path))


def profile_file(profile: str) -> Path | None:
    from edge_runtime.profiles import list_profiles

    p = Path(profile)
    if p.suffix.lower() in (".yaml", ".yml") and p.is_file():
        return p
    return list_profiles().get(profile)


def record(opts: Any, name: str, source_sha256: str) -> Provenance:
    """The provenance block for a conversion with ``opts`` (ConvertOptions) named ``name`` (the package name it
    chose: a new source keeps it) of a source with ``source_sha256``."""
    from converters import calibration as cal

    skip = _OUTPUT | _SPECIAL
    options: dict[str, Any] = opts.model_dump(mode="json", exclude=skip)
    options["name"] = name
    options["source"] = opts.mlflow.model_uri if opts.mlflow is not None else str(opts.source)
    given = opts.given_files
    why: list[str] = []
    inputs = {"source": InputDigest(path=options["source"], sha256=source_sha256)}
    if isinstance(opts.profile, str):
        options["profile"] = opts.profile
        pfile = profile_file(opts.profile)
        if pfile is not None:
            inputs["profile"] = InputDigest(path=opts.profile, sha256=tree_sha256(pfile))
    else:
        options["profile"] = opts.profile.model_dump(mode="json")
    for role in ("calibration", "validation"):
        data = getattr(opts, role)
        if isinstance(data, cal.Dataset):
            options[role] = None
            why.append(f"{role} data was a Python object ({data.description}), not a file")
        elif data is not None:
            options[role] = str(data)
            inputs[role] = _digest(data)
        else:
            options[role] = None
    if isinstance(opts.labels, Path):
        options["labels"], inputs["labels"] = str(opts.labels), _digest(opts.labels)
    else:
        options["labels"] = list(opts.labels) if opts.labels is not None else None
    key = given.get("sign_key") or (opts.sign_key if isinstance(opts.sign_key, Path) else None)
    options["sign_key"] = str(key) if key is not None else None
    if opts.sign_key is not None and key is None:
        why.append("signed with a key given as a Python object: give sign_key in overrides")
    options["passphrase_file"] = str(given["passphrase_file"]) if "passphrase_file" in given else None
    options["extra_files"] = _extra_files(opts, inputs, why)
    if "decoding" in given:
        inputs["decoding"] = _digest(given["decoding"])
    git = git_state(Path(opts.source)) if opts.mlflow is None else None
    return Provenance(options=options, inputs=inputs, workdir=os.getcwd(), git=git, mlflow=opts.mlflow,
                      not_reproducible=tuple(why))  # fmt: skip


def _extra_files(opts: Any, inputs: dict[str, InputDigest], why: list[str]) -> dict[str, str]:
    """Extra package files by the path they came from (SSD anchors: --anchors)."""
    from converters.decoding_file import ANCHORS_FILE

    out = {}
    for name, content in opts.extra_files.items():
        path = opts.given_files.get("anchors") if name == ANCHORS_FILE and isinstance(content, bytes) else content
        if isinstance(path, Path):
            out[name] = str(path)
            inputs[f"file:{name}"] = _digest(path)
        else:
            why.append(f"package file {name} was given as bytes, not a file")
    return out


def recipe_of(manifest_or_package: Any) -> dict[str, Any]:
    """The recorded recipe (the ``provenance`` block as a dict) of a Manifest, a Package, a package folder or
    ``.erpkg`` archive, or a recipe dict (returned as it is, checked). Raises ConversionError when there is none."""
    from edge_runtime.package.manifest import Manifest
    from edge_runtime.package.store import Package, read_archive_manifest, read_manifest

    m = manifest_or_package
    if isinstance(m, Mapping):
        try:
            return Provenance.model_validate(dict(m)).model_dump(mode="json")
        except ValidationError as exc:
            where, msg = first_validation_error(exc)
            raise ConversionError(f"not a conversion recipe: {where + ': ' if where else ''}{msg}") from None
    if isinstance(m, Package):
        m = m.manifest
    elif isinstance(m, str | Path):
        path = Path(m)
        m = read_manifest(path)[0] if path.is_dir() else read_archive_manifest(path)
    if not isinstance(m, Manifest):
        raise ConversionError(f"recipe_of takes a manifest, a package or a path, not {type(m).__name__}")
    if m.provenance is None:
        raise ConversionError(f"{m.name} {m.version} has no recorded recipe (made before recipes were recorded)")
    return m.provenance.model_dump(mode="json")


def resolve(path: str, recipe: Mapping[str, Any]) -> Path:
    """A recorded path: as given when it exists from here, else relative to the recorded working directory."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not recipe.get("workdir"):
        return p
    alt = Path(recipe["workdir"]) / p
    return alt if alt.exists() else p


def options_from_recipe(recipe: Mapping[str, Any], *, source: Path | str, output: Path,
                        calibration: Path | None = None, validation: Path | None = None,
                        overrides: Mapping[str, Any] | None = None) -> Any:  # fmt: skip
    """The ConvertOptions of ``recipe`` for ``source`` -> ``output`` (see :func:`convert_with_recipe`)."""
    from converters.options import ConvertOptions

    rec = recipe_of(recipe)
    o = dict(rec["options"])
    o.update(overrides or {})
    fields: dict[str, Any] = {k: v for k, v in o.items() if k not in ("passphrase_file", "extra_files", "source")}
    fields.update(source=Path(str(source)), out=Path(output))
    for role, given in (("calibration", calibration), ("validation", validation)):
        recorded = o.get(role)
        if given is not None:
            fields[role] = Path(given)
        elif isinstance(recorded, str | Path):
            fields[role] = resolve(str(recorded), rec)
        else:  # None, or a Dataset given in overrides
            fields[role] = recorded
    if fields["calibration"] is None:
        raise ConversionError("the recipe records no calibration file: give calibration=PATH")
    if isinstance(o.get("labels"), str):
        fields["labels"] = resolve(o["labels"], rec)
    elif isinstance(o.get("labels"), list):
        fields["labels"] = tuple(o["labels"])
    given_files: dict[str, Path] = {}
    fields["extra_files"] = _read_extra(o.get("extra_files") or {}, rec, given_files)
    key, passphrase = o.get("sign_key"), o.get("passphrase_file")
    fields["sign_key"] = None if isinstance(key, str | Path) else key  # a key object given in overrides: as it is
    if isinstance(key, str | Path):
        from edge_runtime.package.signing import load_private_key, read_passphrase

        given_files["sign_key"] = resolve(str(key), rec)
        if passphrase:
            given_files["passphrase_file"] = resolve(str(passphrase), rec)
        fields["sign_key"] = load_private_key(given_files["sign_key"],
                                              read_passphrase(given_files.get("passphrase_file")))  # fmt: skip
    fields["given_files"] = given_files
    try:
        return ConvertOptions(**fields)
    except ValidationError as exc:
        where, msg = first_validation_error(exc)
        raise ConversionError(f"recipe option {where or '?'}: {msg}") from None


def _read_extra(files: Mapping[str, str], rec: Mapping[str, Any], given: dict[str, Path]) -> dict[str, bytes | Path]:
    from converters.decoding_file import ANCHORS_FILE, load_anchors

    out: dict[str, bytes | Path] = {}
    for name, path in files.items():
        p = resolve(path, rec)
        if not p.is_file():
            raise ConversionError(f"the recipe's package file {name} comes from {path}, which does not exist")
        if name == ANCHORS_FILE:
            out[name], given["anchors"] = load_anchors(p), p
        else:
            out[name] = p
    return out


def convert_with_recipe(recipe: Mapping[str, Any], *, source: Path, output: Path, calibration: Path | None = None,
                        validation: Path | None = None, overrides: Mapping[str, Any] | None = None,
                        progress: Any = None) -> Path:  # fmt: skip
    """Run the recipe's conversion on ``source`` into the package folder ``output``; returns ``output``.
    See the module docstring. The new package records its own recipe (provenance) as any conversion does."""
    from converters.pipeline import convert

    opts = options_from_recipe(recipe, source=source, output=output, calibration=calibration,
                               validation=validation, overrides=overrides)  # fmt: skip
    return convert(opts, progress=progress).root
