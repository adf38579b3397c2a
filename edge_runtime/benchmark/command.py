"""`edge-runtime bench MODEL_OR_PACKAGE...`: measure variants side by side and say which to deploy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.runner import BenchOptions, BenchRun, run_bench
from edge_runtime.benchmark.variants import expand_variants
from edge_runtime.fsutil import atomic_write_text


def _int_list(text: str) -> list[int]:
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"thread counts must be >= 1, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected at least one backend name")
    return names


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("models", nargs="+", metavar="MODEL_OR_PACKAGE", help=".onnx/.tflite file, package dir or .erpkg")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="thread counts, e.g. 1,2,4 (default 1; with --choose: 1 and the profile's)")
    p.add_argument("--backends", type=_name_list, default=["onnxruntime", "tflite"],
                   help="onnxruntime, tflite (LiteRT), runtime:onnxruntime, runtime:tflite (the edge_runtime API "
                        "on a package); a backend that cannot run a model is listed as skipped")
    p.add_argument("--warmup", type=int, default=10, help="untimed inferences per variant first (default 10)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--runs", type=int, default=None, help="timed inferences per variant (default 100)")
    how.add_argument("--min-time", type=float, default=None, metavar="S", help="timed seconds per variant instead")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds the timed work is split into")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--baseline", default=None, help="variant id (or prefix) the ratios use (default: the first)")
    p.add_argument("--validation", type=Path, default=None, metavar="DATA",
                   help=".npz with x (float model inputs) and optional y (labels), or an .npy of inputs")
    p.add_argument("--validation-limit", type=int, default=None, metavar="N", help="use the first N samples only")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the results as JSON")
    p.add_argument("--report", type=Path, default=None, metavar="DIR", help="write PNG plots and report.html")
    p.add_argument("--compare", type=Path, default=None, metavar="REFERENCE", help="reference JSON to check against")
    p.add_argument("--tolerance", type=float, default=None, help="relative tolerance for --compare (default 0.15)")
    p.add_argument("--noise-threshold", type=float, default=None,
                   help="warn above this relative spread (default 0.10, or tolerance/2 with --compare)")
    p.add_argument("--reference-name", default=None, metavar="NAME", help="device name stored in the JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _configure_choose(p.add_argument_group("choosing (--choose SOURCE): build candidates, write the fastest that "
                                           "keeps accuracy as a package; needs the convert extra"))


def _ratios(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ratios like 0.3,0.5, got {text!r}") from None
    if any(not 0 <= v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"pruning ratios must be in [0, 1), got {text!r}")
    return values


def _configure_choose(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--choose", action="store_true", help="build and measure candidates of ONE source model")
    g.add_argument("--profile", help="device profile (formats, precisions, accuracy budget)")
    g.add_argument("--out", type=Path, help="package directory to write the chosen candidate to")
    g.add_argument("--calibration", type=Path, help="int8 calibration data (default: --validation, 20%% held back)")
    g.add_argument("--prune-ratios", type=_ratios, help="pruning ratios to try, PyTorch sources (default 0.3,0.5)")
    g.add_argument("--prune-importance", choices=["l1", "group"], help="channel importance (default l1)")
    g.add_argument("--fine-tune-epochs", type=int, help="built-in fine-tune epochs after pruning (default 3)")
    g.add_argument("--train-cmd", metavar="CMD", help="fine-tune with your command ({data} {model} {output})")
    g.add_argument("--input-shape", type=_int_list, help="input shape for PyTorch sources, e.g. 1,3,224,224")
    g.add_argument("--labels", type=Path, help="class names file, one per line in output order")
    g.add_argument("--mean", help="normalisation mean, pixel units (as convert)")
    g.add_argument("--std", help="normalisation std, pixel units (as convert)")
    g.add_argument("--max-samples", type=int, help="calibration samples (default: the profile's)")
    g.add_argument("--sign-key", type=Path, help="Ed25519 private key to sign the chosen package")
    g.add_argument("--force", action="store_true", help="replace an existing --out directory")


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """Check option combinations before any work, with one message saying what to change."""
    from edge_runtime.benchmark.accuracy import load_validation

    if args.tolerance is not None and args.compare is None:
        raise BenchmarkError("--tolerance only applies with --compare REFERENCE.json")
    tolerance = 0.15 if args.tolerance is None else args.tolerance
    if tolerance < 0:
        raise BenchmarkError("--tolerance must be >= 0")
    if args.warmup < 0 or args.rounds < 1:
        raise BenchmarkError("--warmup must be >= 0 and --rounds >= 1")
    if args.runs is not None and args.runs < 1:
        raise BenchmarkError("--runs must be >= 1")
    if args.min_time is not None and args.min_time <= 0:
        raise BenchmarkError("--min-time must be > 0 seconds")
    if args.compare is not None and not args.compare.is_file():
        raise BenchmarkError(f"--compare reference {args.compare} does not exist")
    runs = args.runs if args.runs is not None or args.min_time is not None else 100
    noise = args.noise_threshold if args.noise_threshold is not None else (
        tolerance / 2 if args.compare is not None else 0.10)
    return BenchOptions(
        warmup=args.warmup, runs=runs, min_time_s=args.min_time, rounds=min(args.rounds, runs or args.rounds),
        seed=args.seed, baseline=args.baseline, noise_threshold=noise, reference_name=args.reference_name,
        validation=load_validation(args.validation, args.validation_limit) if args.validation else None,
    )


def make_progress(total: int, enabled: bool) -> tuple[Callable[[str], None], Callable[[], None]]:
    """A progress bar on stderr (tqdm when installed, else a one-line counter); returns (step, close)."""
    if not enabled:
        return (lambda _msg: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ImportError:
        count = [0]

        def step(msg: str) -> None:
            count[0] += 1
            print(f"\r[{count[0]}/{total}] {msg[:70]:<70}", end="", file=sys.stderr, flush=True)

        return step, (lambda: print(file=sys.stderr))
    bar = tqdm(total=total, file=sys.stderr, unit="step", leave=False, dynamic_ncols=True)

    def tstep(msg: str) -> None:
        bar.set_description_str(msg[:50])
        bar.update(1)

    return tstep, bar.close


def emit(run: BenchRun, args: argparse.Namespace, tolerance: float) -> int:
    """Print the table, write JSON/report, run the comparison; return the exit code."""
    from edge_runtime.benchmark.report import format_table, write_report

    report = run.report
    print(format_table(report), flush=True)
    code = 0
    if args.compare is not None:
        from edge_runtime.benchmark.compare import compare, format_outcome, load_reference

        reference = load_reference(args.compare)
        outcome = compare(report, reference, tolerance)
        print(format_outcome(outcome, str(args.compare), tolerance))
        code = 1 if outcome.regressions else 0
    if args.json is not None:
        atomic_write_text(args.json, report.model_dump_json(indent=2) + "\n", mode=0o644)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.report is not None:
        for path in write_report(report, run.samples_ms, args.report):
            print(f"wrote {path}", file=sys.stderr)
    if not any(v.status == "ok" for v in report.variants):
        print("edge-runtime: error: no variant could be measured (see the reasons above)", file=sys.stderr)
        return 1
    return code


def _choose_flags_unused(args: argparse.Namespace) -> str | None:
    for flag in ("profile", "out", "calibration", "prune_ratios", "prune_importance", "fine_tune_epochs", "train_cmd",
                 "input_shape", "labels", "mean", "std", "max_samples", "sign_key"):  # fmt: skip
        if getattr(args, flag) is not None:
            return "--" + flag.replace("_", "-")
    return "--force" if args.force else None


def run(args: argparse.Namespace) -> int:
    if args.choose:
        from converters.optimize.choose import run_choose  # laptop side: builds packages (convert extra)

        # --validation is the raw labelled data here (images or arrays, as convert reads), not bench's .npz x/y
        return run_choose(args, options_from_args(argparse.Namespace(**{**vars(args), "validation": None})))
    stray = _choose_flags_unused(args)
    if stray:
        raise BenchmarkError(f"{stray} applies with --choose only")
    args.threads = args.threads or [1]
    opts = options_from_args(args)
    if args.compare is not None:
        from edge_runtime.benchmark.compare import load_reference

        load_reference(args.compare)  # a bad reference fails now, not after minutes of measuring
    variants = expand_variants([str(m) for m in args.models], args.backends, args.threads)
    live = sum(1 for v in variants if not v.skip_reason)
    total = live * (2 + opts.rounds + (1 if opts.validation else 0))
    step, close = make_progress(total, not args.no_progress and sys.stderr.isatty())
    try:
        result = run_bench(variants, opts, step)
    finally:
        close()
    return emit(result, args, 0.15 if args.tolerance is None else args.tolerance)
