"""`edge-runtime registry reproduce NAME VERSION`: re-run a registered version's recorded conversion here and
compare. The model file's sha256 is what must match (not the archive's: its signature and times differ); when it
does not, the report says which recorded input or tool differs, or, when every one matches, that the bytes
differ anyway, with both digests."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import ConfigError, EdgeRuntimeError


@dataclass
class Report:
    """What reproducing one version found; ``identical`` is the verdict (exit 0), the rest says why not."""

    name: str
    version: str
    recorded_sha256: str
    sha256: str | None = None
    missing: list[str] = field(default_factory=list)  # "calibration data/calib"
    inputs: list[tuple[str, str, str, str]] = field(default_factory=list)  # role, path, recorded, now
    tools: list[tuple[str, str, str]] = field(default_factory=list)  # name, recorded, now
    error: str | None = None

    @property
    def identical(self) -> bool:
        return self.sha256 == self.recorded_sha256

    def lines(self) -> list[str]:
        out = [f"input {m} is missing" for m in self.missing]
        out += [f"input {r} differs: {p} sha256 recorded {a[:16]}, now {b[:16]}" for r, p, a, b in self.inputs]
        out += [f"tool {n} differs: recorded {a}, now {b}" for n, a, b in self.tools]
        if self.error:
            out.append(f"the conversion failed: {self.error}")
        if self.sha256 is None:
            out.append(f"{self.name} {self.version}: not reproduced")
        elif self.identical:
            out.append(f"{self.name} {self.version}: identical model bytes (sha256 {self.sha256})")
        else:
            why = "" if self.missing or self.inputs or self.tools else "every recorded input and tool matches, but "
            out.append(f"{self.name} {self.version}: {why}the model bytes differ: recorded sha256 "
                       f"{self.recorded_sha256}, now {self.sha256}")  # fmt: skip
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "identical": self.identical,
                "recorded_sha256": self.recorded_sha256, "sha256": self.sha256, "missing": self.missing,
                "inputs": [dict(zip(("role", "path", "recorded", "now"), i, strict=True)) for i in self.inputs],
                "tools": [dict(zip(("name", "recorded", "now"), t, strict=True)) for t in self.tools],
                "error": self.error}  # fmt: skip


def _input_path(role: str, path: str, recipe: Mapping[str, Any]) -> Path | None:
    """Where a recorded input is here (None: a URI, checked through the conversion itself)."""
    from converters.recipe import profile_file, resolve

    if path.startswith("models:/"):
        return None
    if role == "profile":
        return profile_file(path)
    return resolve(path, recipe)


def check_inputs(recipe: Mapping[str, Any], report: Report) -> None:
    """Each recorded input file against what the same path holds here."""
    from edge_runtime.fsutil import tree_sha256

    for role, d in recipe.get("inputs", {}).items():
        where = _input_path(role, d["path"], recipe)
        if where is None:
            continue
        if not where.exists():
            report.missing.append(f"{role} {d['path']}")
            continue
        now = tree_sha256(where)
        if now != d["sha256"]:
            report.inputs.append((role, d["path"], d["sha256"], now))


def compare_after(recipe: Mapping[str, Any], tools: Mapping[str, str], manifest: Any, report: Report) -> None:
    """What the new conversion recorded: the inputs only it could read (a models:/ source), and tool versions."""
    seen = {r for r, *_ in report.inputs}
    for role, d in recipe.get("inputs", {}).items():
        new = manifest.provenance.inputs.get(role) if manifest.provenance else None
        if role not in seen and new is not None and new.sha256 != d["sha256"]:
            report.inputs.append((role, d["path"], d["sha256"], new.sha256))
    for name in sorted(set(tools) | set(manifest.tools)):
        a, b = tools.get(name, "-"), manifest.tools.get(name, "-")
        if a != b:
            report.tools.append((name, a, b))


_PICKLED = (".pkl", ".pickle", ".joblib", ".pt", ".pth")  # sources loaded by unpickling (code in them runs)


def check_trusted(recipe: Mapping[str, Any], source: Any, allow_pickle: bool) -> None:
    """The server's recipe is not the signed manifest's (whoever registers a version can set it): it may not make
    this machine run a command it names, nor unpickle a file it names unless the user vouches for that file."""
    prune = recipe["options"].get("prune")
    if isinstance(prune, Mapping) and prune.get("train_cmd"):
        raise ConfigError(f"the recipe names a training command (prune train_cmd {str(prune['train_cmd'])[:200]!r}); "
                          "reproduce does not run commands from a recipe: re-run convert --prune yourself")
    if isinstance(source, Path) and source.suffix.lower() in _PICKLED and not allow_pickle:
        raise ConfigError(f"the recipe's source {source} would be unpickled, which runs code in the file: give "
                          "--allow-pickle if it is your own model file")


def reproduce(doc: Mapping[str, Any], say: Callable[[str], None], mlflow_uri: str | None = None,
              allow_pickle: bool = False) -> Report:
    """Re-run the recorded conversion of the registry version ``doc`` (the server's version document); an MLflow
    source is fetched again from ``mlflow_uri`` (default $MLFLOW_TRACKING_URI). ``allow_pickle``: the user vouches
    for a pickled source file the recipe names (see :func:`check_trusted`)."""
    from converters.recipe import convert_with_recipe, recipe_of
    from edge_runtime.package.store import read_manifest

    lin = doc.get("lineage") or {}
    recorded = (lin.get("model_file") or {}).get("sha256")
    raw = lin.get("recipe") or {}
    if not recorded or "options" not in raw:
        raise ConfigError(f"{doc['name']} {doc['version']} has no recorded recipe (registered from a package made "
                          "before convert recorded its recipe): nothing to reproduce")  # fmt: skip
    recipe = recipe_of(raw)
    if recipe["not_reproducible"]:
        raise ConfigError(f"{doc['name']} {doc['version']} cannot be re-run from its recipe: "
                          + "; ".join(recipe["not_reproducible"]))  # fmt: skip
    src = recipe.get("mlflow")  # an MLflow source: exactly the version it used, wherever the alias is now
    source = f"models:/{src['name']}/{src['version']}" if src else _input_path("source", recipe["options"]["source"],
                                                                                recipe)  # fmt: skip
    check_trusted(recipe, source, allow_pickle)
    report = Report(doc["name"], doc["version"], recorded)
    check_inputs(recipe, report)
    if report.missing:
        return report
    with tempfile.TemporaryDirectory(prefix="edge-reproduce-") as tmp:
        try:  # model bytes do not depend on the signature: no key (nor passphrase) is needed here
            out = convert_with_recipe(recipe, source=source, output=Path(tmp) / "pkg",
                                      overrides={"sign_key": None, "mlflow_uri": mlflow_uri}, progress=say)  # fmt: skip
        except EdgeRuntimeError as exc:
            if not (report.inputs or report.tools):
                raise
            report.error = str(exc)
            return report
        manifest = read_manifest(out)[0]
        compare_after(recipe, lin.get("tools") or {}, manifest, report)
        from edge_runtime.fsutil import sha256_file

        report.sha256 = sha256_file(out / manifest.model_file)
    return report
