"""The conversion pipeline: source model -> float model -> target (int8 or float) -> guard -> signed package.

``convert(ConvertOptions) -> Package`` is the Python API; ``edge-runtime convert`` is a thin layer over it.
Every argument combination is checked before any model is loaded, and every file is built in a temporary
folder so a failure leaves nothing behind.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from converters import calibration as cal
from converters import packager, recipe
from converters.build import build_target, packaged_specs
from converters.context import Progress, open_context
from converters.options import ConvertOptions, Plan, plan
from edge_runtime.package.manifest import QuantizationInfo, SourceInfo
from edge_runtime.package.store import Package

__all__ = ["ConvertOptions", "Plan", "convert", "plan", "run_stages"]


def _stderr(msg: str) -> None:
    print(f"convert: {msg}", file=sys.stderr, flush=True)


def convert(opts: ConvertOptions, progress: Progress | None = None) -> Package:
    """Convert ``opts.source`` into a package at ``opts.out``; see the module docstring."""
    say = progress or _stderr
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as tmp:
        opts = _fetched(opts, Path(tmp) / "mlflow", say)
        p = plan(opts)
        for note in p.notes:
            say(note)
        return run_stages(opts, p, Path(tmp), say)


def _fetched(opts: ConvertOptions, dest: Path, say: Progress) -> ConvertOptions:
    """A models:/ source downloaded from its MLflow registry into ``dest`` (the options then name the file)."""
    from converters import mlflow_source

    if not mlflow_source.is_model_uri(opts.source) or opts.mlflow is not None:
        return opts
    uri = str(opts.source)
    path, src = mlflow_source.fetch(uri, dest, opts.mlflow_uri)
    say(f"fetched {uri} (version {src.version}, run {src.run_id or '-'}) from MLflow: {path.name}")
    name = opts.name or re.sub(r"[^A-Za-z0-9._-]", "_", src.name)[:64]
    return opts.model_copy(update={"source": path, "mlflow": src, "name": name})


def run_stages(opts: ConvertOptions, p: Plan, work: Path, say: Progress) -> Package:
    """Load and check data, build the target, then gather the manifest's parts and write the package."""
    ctx = open_context(opts, p, work, say)
    pruning = None
    if opts.prune is not None:
        from converters.optimize.stage import prune_stage

        ctx, pruning = prune_stage(ctx)
    built = build_target(ctx)
    qm = built.model
    say("computing reference statistics and golden pairs")
    pspecs = packaged_specs(ctx.fspecs, qm)
    cls, act = built.outputs.class_idx, built.outputs.activation
    out_spec = packager.output_spec(qm, cls, p.labels, act, opts.decoding, opts.task)
    state_in = {b.input for b in opts.state}
    data_spec = next(s for s in ctx.fspecs if s.name not in state_in)  # the drift baseline is about data
    ref = packager.reference_stats(
        data_spec, ctx.data.frame_order, ctx.calib, ctx.fbuild, built.float_run, cls, act
    )
    qbuild = cal.InputBuilder(pspecs, ctx.vbuild.frame_order, ctx.vbuild.source)
    golden = packager.golden_pairs(qm, qbuild, ctx.valid, opts.golden_count)
    tools = {**recipe.tool_versions(), **ctx.fm.tool_versions, **qm.tool_versions, "edge-runtime": _own_version()}
    quant = QuantizationInfo(
        precision=qm.precision,
        method=qm.method,
        calibration_method=qm.calibration_method,
        calibration_samples=ctx.n_calib if qm.precision == "int8" else 0,
        calibration_fingerprint=ctx.fingerprint if qm.precision == "int8" else None,
        per_channel=qm.per_channel,
        symmetric_activations=qm.symmetric_activations,
        float_nodes=qm.float_nodes,
        remedies=tuple(built.remedies),
    )
    parts = packager.PackageParts(
        name=p.name,
        version=opts.version,
        profile=p.profile.name,
        model=qm,
        inputs=pspecs,
        outputs=out_spec,
        quantization=quant,
        accuracy=built.accuracy,
        reference=ref,
        golden=golden,
        golden_atols=packager.golden_atols(qm, golden),
        source=SourceInfo(format=ctx.fm.source_format, filename=Path(opts.source).name, sha256=ctx.fm.source_sha256),
        tools=tools,
        extra_files=opts.extra_files,
        state=opts.state,
        pruning=pruning,
        provenance=recipe.record(opts, p.name, ctx.fm.source_sha256),
    )
    say(f"writing package {opts.out}")
    return packager.write(parts, Path(opts.out), p.key, opts.force, opts.archive)


def _own_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edge-runtime")
    except PackageNotFoundError:
        return "dev"
