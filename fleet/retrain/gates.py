"""Conversion with the parent's recorded recipe, and the gates a candidate must pass before it is registered.

Gates: accuracy on the policy's fixed holdout no worse than the parent's beyond the tolerance; better than the
parent on the recent field data (the snapshot's field split, never trained on); the candidate's golden outputs
reproduce on the server. Each gate records the figures it used.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from edge_runtime.api import load
from edge_runtime.golden import smoke_test
from fleet.retrain import RetrainError
from fleet.retrain.policy import Gates
from fleet.retrain.snapshot import IMAGE_SUFFIXES, read_image


def convert_candidate(recipe: dict[str, Any], *, source: Path, output: Path, calibration: Path | None,
                      overrides: dict[str, Any]) -> Path:
    """Re-run the parent's recorded conversion (converters.recipe) on the new source model; the package folder.

    The recipe is the registry's lineage, which whoever registered the parent could set (``X-Lineage``): it may not
    make the server run a command (a pruning ``train_cmd``) or copy server files into the candidate
    (``extra_files``) unless the retrain policy, written by whoever runs the server, sets those options itself."""
    from converters.recipe import convert_with_recipe

    opts = recipe.get("options") or {}
    prune = opts.get("prune")
    if isinstance(prune, dict) and prune.get("train_cmd") and "prune" not in overrides:
        raise RetrainError("the parent's recorded recipe names a pruning training command; the server does not run "
                           "commands from the registry: set overrides.prune in retrain.yaml")
    if opts.get("extra_files") and "extra_files" not in overrides:
        raise RetrainError("the parent's recorded recipe adds extra files to the package; the server does not copy "
                           "files the registry names: set overrides.extra_files in retrain.yaml")

    return convert_with_recipe(recipe, source=source, output=output, calibration=calibration, overrides=overrides,
                               progress=lambda _s: None)


def holdout_items(root: Path) -> list[tuple[Path, str]]:
    """A folder per class of images."""
    if not root.is_dir():
        raise RetrainError(f"holdout {root}: not a folder (a folder per class of images)")
    items = [(f, c.name) for c in sorted(root.iterdir()) if c.is_dir()
             for f in sorted(c.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise RetrainError(f"holdout {root}: no class folders with images")
    return items


def accuracy(model: Any, items: Iterable[tuple[Path, str]]) -> dict[str, Any]:
    hits = n = 0
    for path, label in items:
        frame = read_image(path)
        if frame is None:
            continue
        top = model.predict(frame).top
        n += 1
        hits += int(top is not None and (top.label or str(top.index)) == label)
    return {"accuracy": None if n == 0 else round(hits / n, 4), "samples": n}


def run_gates(candidate: Path, parent: Path, gates: Gates, field: list[tuple[Path, str]], trust: Any) -> dict[str, Any]:
    """Every gate's verdict and figures; ``passed`` only when all pass."""
    out: dict[str, Any] = {}
    holdout = holdout_items(gates.holdout)
    with load(candidate, trust=trust) as cand, load(parent, allow_unsigned=True) as par:
        hc, hp = accuracy(cand, holdout), accuracy(par, holdout)
        ok = hc["accuracy"] is not None and hp["accuracy"] is not None and \
            hc["accuracy"] >= hp["accuracy"] - gates.tolerance
        out["holdout"] = {"passed": ok, "candidate": hc, "parent": hp, "tolerance": gates.tolerance}
        fc, fp = accuracy(cand, field), accuracy(par, field)
        ok = fc["accuracy"] is not None and fp["accuracy"] is not None and \
            fc["accuracy"] > fp["accuracy"] + gates.min_field_gain
        out["field"] = {"passed": ok, "candidate": fc, "parent": fp, "min_gain": gates.min_field_gain}
        if gates.golden:
            rep = smoke_test(cand)
            out["golden"] = {"passed": rep.passed, "pairs": rep.pairs, "max_abs_error": rep.max_abs_error,
                             "reasons": list(rep.reasons)}
    failed = [k for k, v in out.items() if not v["passed"]]
    out["passed"] = not failed
    out["reason"] = None if not failed else "; ".join(_why(k, out[k]) for k in failed)
    return out


def _why(gate: str, v: dict[str, Any]) -> str:
    if gate == "golden":
        return "golden outputs: " + ", ".join(v["reasons"])
    c, p = v["candidate"]["accuracy"], v["parent"]["accuracy"]
    if c is None or p is None:
        return f"{gate}: no labelled {gate} data to judge on"
    if gate == "holdout":
        return f"holdout accuracy {c:.3f} is below the parent's {p:.3f} by more than {v['tolerance']}"
    return f"field accuracy {c:.3f} does not beat the parent's {p:.3f} (by more than {v['min_gain']})"


def field_items(sample_dir: Path, entries: list[dict[str, Any]]) -> list[tuple[Path, str]]:
    return [(sample_dir / e["sha256"][:2] / f"{e['sha256']}.{e['ext']}", e["label"]) for e in entries]


def class_names(model: Any) -> tuple[str, ...]:
    labels = model.manifest.outputs.labels
    if not labels:
        raise RetrainError("the parent package has no class labels: re-training needs a classifier with labels")
    return tuple(labels)
