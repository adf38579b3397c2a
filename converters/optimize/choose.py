"""`edge-runtime bench --choose SOURCE --profile P --validation DATA --out PKG`: build the candidates, measure
them here with the benchmark runner, and write the fastest that keeps accuracy as the package.

Candidates: every format the profile allows and the source can become, at float32 and int8 (as the profile
allows), unpruned and (PyTorch sources) at each pruning ratio; each at every thread count. Each is a full
`convert` (int8 with its accuracy guard). Accuracy is measured by the benchmark on labelled data the candidates
were not fine-tuned or calibrated on; the selection rule is in ``edge_runtime.benchmark.choose``.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters import calibration as cal
from converters.labels import class_indices
from converters.optimize import NEEDS_TORCH, PruneOptions, PruningError
from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.accuracy import ValidationData
from edge_runtime.benchmark.choose import Candidate, format_selection, select, selection_table
from edge_runtime.benchmark.runner import BenchOptions, BenchRun, run_bench
from edge_runtime.benchmark.variants import expand_variants
from edge_runtime.errors import ConversionError
from edge_runtime.package.store import Package, load_package, write_package
from edge_runtime.profiles import DeviceProfile

DEFAULT_RATIOS = (0.3, 0.5)
_BACKEND = {"onnx": "onnxruntime", "tflite": "tflite"}
HOLDOUT = 0.2  # without --calibration: the share of --validation held back from calibration, and measured on


@dataclass(frozen=True)
class ChooseRequest:
    """A checked `bench --choose` call."""

    source: Path
    profile: DeviceProfile
    validation: Path
    out: Path
    threads: tuple[int, ...]
    calibration: Path | None = None
    ratios: tuple[float, ...] | None = None  # None: DEFAULT_RATIOS for a PyTorch source, none otherwise
    prune: dict = field(default_factory=dict)  # importance, fine_tune_epochs, train_cmd
    convert: dict = field(default_factory=dict)  # input_shape, labels, mean, std, max_samples
    sign_key: Path | None = None
    force: bool = False


def _say(msg: str) -> None:
    print(f"choose: {msg}", file=sys.stderr, flush=True)


def check(req: ChooseRequest) -> tuple[str, tuple[float, ...]]:
    """The source format and the pruning ratios, checked before any work."""
    from converters.sources import detect_format

    src = detect_format(req.source)
    if not req.validation.exists():
        raise ConversionError(f"--validation {req.validation} does not exist")
    if req.calibration is not None and not req.calibration.exists():
        raise ConversionError(f"--calibration {req.calibration} does not exist")
    if req.out.exists() and not req.force:
        raise ConversionError(f"{req.out} already exists (use --force to replace it)")
    if req.ratios is not None and src != "torch" and any(r > 0 for r in req.ratios):
        raise PruningError(NEEDS_TORCH.format(fmt=src))
    ratios = req.ratios if req.ratios is not None else (DEFAULT_RATIOS if src == "torch" else ())
    if src != "torch" and req.ratios is None:
        _say(NEEDS_TORCH.format(fmt=src).split(":")[0] + f" ({src} source): no pruned candidates")
    return src, tuple(dict.fromkeys([0.0, *ratios]))


def build(req: ChooseRequest, ratios: tuple[float, ...], work: Path) -> list[Candidate]:
    """Convert every candidate into ``work``; one that cannot be made is kept with the reason."""
    from converters.pipeline import ConvertOptions, convert

    precisions = [p for p in ("float32", "int8") if p in req.profile.formats.precisions]
    out: list[Candidate] = []
    for ratio in ratios:
        for fmt in req.profile.formats.allowed:
            for prec in precisions:
                key = f"{fmt}/{'float' if prec == 'float32' else prec}/p{ratio:g}"
                name = f"{req.source.stem}-{fmt}-{prec}-p{round(ratio * 100)}".replace(" ", "_")[:64]
                prune = PruneOptions(ratio=ratio, **req.prune) if ratio > 0 else None
                data = {"calibration": req.validation, "validation": None} if req.calibration is None else {
                    "calibration": req.calibration, "validation": req.validation}  # fmt: skip
                _say(f"building {key}")
                try:
                    opts = ConvertOptions(source=req.source, profile=req.profile, out=work / name, name=name,
                                          format=fmt, precision=prec, prune=prune, holdout=HOLDOUT, force=True,
                                          **data, **req.convert)  # fmt: skip
                    pkg = convert(opts, progress=lambda _m: None)
                except ConversionError as exc:
                    _say(f"{key}: not built: {exc}")
                    out.append(Candidate(key, fmt, prec, ratio, None, str(exc)))
                    continue
                out.append(Candidate(key, fmt, prec, ratio, str(pkg.root)))
    return out


def validation_data(req: ChooseRequest, float_pkg: Package) -> ValidationData:
    """Labelled float inputs for the benchmark: all of --validation, or (without --calibration) its held-back
    share, preprocessed by the float package's input spec (int8 candidates quantize them with their own)."""
    specs = list(float_pkg.manifest.inputs)
    if len(specs) != 1:
        raise BenchmarkError("bench --choose measures accuracy on single-input models only")
    data = cal.open_dataset(req.validation, [specs[0].name], 100_000)
    subset = cal.Subset(data) if req.calibration is not None else cal.Subset(data, "validation", None, HOLDOUT)
    build = cal.InputBuilder(specs, data.frame_order, data.description)
    x = np.concatenate([b[0] for b in build.over(subset)], axis=0).astype(np.float32)
    raw = subset.labels()
    if raw is None:
        raise BenchmarkError(f"--validation {req.validation} has no labels: bench --choose keeps accuracy by "
                             "labelled top-1 (an .npz with a 'labels' array, class folders or labels.csv)")  # fmt: skip
    names = float_pkg.manifest.outputs.labels
    classes = float_pkg.manifest.outputs.tensors[0].shape[-1]
    idx = class_indices(raw, names, classes)
    keep = [i for i, v in enumerate(idx) if v is not None]
    return ValidationData(str(req.validation), x[keep][:, None] if x.ndim == len(specs[0].shape) - 1 else x[keep],
                          np.asarray([idx[i] for i in keep], np.int64))  # fmt: skip


def measure(cands: list[Candidate], threads: tuple[int, ...], opts: BenchOptions) -> tuple[BenchRun, dict]:
    built = [c for c in cands if c.package is not None]
    variants, variant_of = [], {}
    for c in built:
        for v in expand_variants([c.package], [_BACKEND[c.format]], list(threads)):  # type: ignore[list-item]
            variants.append(v)
            variant_of[v.id] = (c.key, v.threads)
    _say(f"measuring {len(variants)} variant(s) of {len(built)} candidate package(s) on this machine")
    return run_bench(variants, opts), variant_of


def write_chosen(req: ChooseRequest, chosen: Candidate, info) -> Package:  # type: ignore[no-untyped-def]
    """The chosen candidate as the package at --out, under the source's name, with the selection table."""
    from edge_runtime.package.signing import load_private_key

    assert chosen.package is not None
    pkg = load_package(chosen.package, allow_unsigned=True)  # built just now in our own temporary folder
    fields = pkg.manifest.model_dump(mode="json", exclude={"files"})
    fields.update(name=req.source.stem.replace(" ", "_")[:64], selection=info.model_dump(mode="json"))
    files = {f.path: pkg.root / f.path for f in pkg.manifest.files}
    key = load_private_key(req.sign_key) if req.sign_key is not None else None
    return write_package(req.out, files, fields, sign_key=key, overwrite=req.force)


def choose(req: ChooseRequest, bench: BenchOptions, report_dir: Path | None) -> Package:
    """Build, measure, select, write; prints the bench table and the selection table."""
    from edge_runtime.benchmark.report import format_table, write_report
    from edge_runtime.fsutil import atomic_write_text

    _, ratios = check(req)
    with tempfile.TemporaryDirectory(prefix="edge-choose-") as tmp:
        cands = build(req, ratios, Path(tmp))
        float_ref = next((c for c in cands if c.package and c.precision == "float32" and c.prune_ratio == 0), None)
        if float_ref is None:
            why = next((c.note or "" for c in cands if c.precision == "float32"), "the profile allows no float32")
            raise ConversionError(f"the unpruned float candidate could not be built: {why}")
        vd = validation_data(req, load_package(float_ref.package, allow_unsigned=True))  # type: ignore[arg-type]
        run, variant_of = measure(cands, req.threads, dataclasses.replace(bench, validation=vd))
        print(format_table(run.report), flush=True)
        info, chosen = select(run.report, cands, variant_of, req.profile.budgets.max_accuracy_drop,
                              run.report.machine.describe())  # fmt: skip
        print(format_selection(info), flush=True)
        pkg = write_chosen(req, chosen, info)
    if report_dir is not None:
        tables = {"Choice: " + info.rule: selection_table(info)}
        for path in write_report(run.report, run.samples_ms, report_dir, tables):
            _say(f"wrote {path}")
        atomic_write_text(report_dir / "bench.json", run.report.model_dump_json(indent=2) + "\n", mode=0o644)
    _say(f"wrote {req.out}: {info.chosen} (run it with {info.threads} thread(s))")
    return pkg

def _floats(flag: str, text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ConversionError(f"{flag}: expected numbers separated by commas, got {text!r}") from None


def request_from_args(args) -> ChooseRequest:  # type: ignore[no-untyped-def]
    """Check the `bench --choose` flags before any work, with one message saying what to change."""
    from edge_runtime.profiles import load_profile

    missing = [f"--{f}" for f in ("profile", "validation", "out") if getattr(args, f) is None]
    if missing:
        raise BenchmarkError(f"bench --choose needs {', '.join(missing)}")
    if len(args.models) != 1:
        raise BenchmarkError(f"bench --choose takes one source model, got {len(args.models)}")
    for flag in ("compare", "baseline"):
        if getattr(args, flag) is not None:
            raise BenchmarkError(f"--{flag} does not apply with --choose")
    profile = load_profile(args.profile)
    threads = tuple(args.threads or dict.fromkeys([1, profile.backends.onnxruntime.threads]))
    prune = {k: v for k, v in (("importance", args.prune_importance), ("fine_tune_epochs", args.fine_tune_epochs),
                               ("train_cmd", args.train_cmd)) if v is not None}  # fmt: skip
    conv = {"input_shape": tuple(args.input_shape) if args.input_shape else None, "labels": args.labels,
            "mean": _floats("--mean", args.mean), "std": _floats("--std", args.std), "max_samples": args.max_samples}
    if args.labels is not None and not args.labels.is_file():
        raise ConversionError(f"--labels {args.labels}: no such file")
    return ChooseRequest(source=Path(args.models[0]), profile=profile, validation=args.validation, out=args.out,
                         threads=threads, calibration=args.calibration,
                         ratios=tuple(args.prune_ratios) if args.prune_ratios is not None else None, prune=prune,
                         convert={k: v for k, v in conv.items() if v is not None}, sign_key=args.sign_key,
                         force=args.force)  # fmt: skip


def run_choose(args, bench: BenchOptions) -> int:  # type: ignore[no-untyped-def]
    """`edge-runtime bench --choose ...`: the report goes to --report DIR, else beside --out (OUT.report/)."""
    from edge_runtime.commands.package_cmds import summary

    req = request_from_args(args)
    report_dir = args.report or req.out.with_name(req.out.name + ".report")
    pkg = choose(req, bench, report_dir)
    if args.json is not None:
        from edge_runtime.fsutil import atomic_write_text

        atomic_write_text(args.json, (report_dir / "bench.json").read_text(), mode=0o644)
    print(summary(pkg.manifest, pkg.root, None))
    return 0
