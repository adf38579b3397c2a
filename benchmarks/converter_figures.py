"""Issue-12 figures: real pretrained models from PyPI packages through `edge-runtime convert`, as a user runs it.

    .venv/bin/python benchmarks/converter_figures.py [--models silero-vad,magika,...] [--samples 64] [--work DIR]

For each model (converters.zoo.brought.RECIPES: Silero VAD, BlazeFace full-range, magika, openWakeWord embedding
and hey-mycroft): prepare real inputs, run `edge-runtime convert` in a subprocess (wall time measured here), then
print the guard's figures from the manifest (float and int8 accuracy with labels, top-1 agreement, cosine, max
error, decision and reason) and what the package did on real input. A refused conversion prints its one-line
reason. Needs espeak-ng (speech) and the packages of the `dev` extra.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converters.zoo import brought  # noqa: E402
from edge_runtime.benchmark.machine import describe_machine, machine_summary  # noqa: E402
from edge_runtime.package.manifest import Manifest  # noqa: E402


def _fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def convert(r: brought.Recipe, out: Path) -> tuple[int, float, str]:
    cmd = [sys.executable, "-m", "edge_runtime.cli", "convert", str(r.source), *r.args, "--out", str(out), "--force"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    return proc.returncode, time.perf_counter() - t0, proc.stderr


def one(name: str, work: Path, samples: int) -> None:
    r = brought.recipe(name, work / name, samples)
    out = work / name / "pkg"
    rc, wall, err = convert(r, out)
    print(f"\n== {name}: {r.kind}\n   edge-runtime convert {r.source.name} {' '.join(r.args)}")
    table = [ln.split("guard | ", 1)[1] for ln in err.splitlines() if "guard | " in ln]
    for line in table:
        print(f"   {line}")
    if rc != 0:
        last = [ln for ln in err.splitlines() if ln.startswith("edge-runtime: error:")]
        print(f"   REFUSED after {wall:.1f} s wall: {last[-1] if last else err.strip().splitlines()[-1]}")
        return
    m = Manifest.model_validate_json((out / "manifest.json").read_text())
    a = m.accuracy
    assert a is not None
    print(f"   format {m.format}, {m.quantization.method}, calibration {m.quantization.calibration_method}, "
          f"conversion wall time {wall:.1f} s")
    print(f"   float acc {_fmt(a.float_accuracy)}  int8 acc {_fmt(a.int8_accuracy)}  "
          f"(95% {_fmt(a.int8_accuracy_ci[0], 3) if a.int8_accuracy_ci else '-'}..."
          f"{_fmt(a.int8_accuracy_ci[1], 3) if a.int8_accuracy_ci else '-'})  agreement {_fmt(a.top1_agreement)}  "
          f"cosine {_fmt(a.cosine_similarity)}  max err {_fmt(a.max_abs_error, 4)}  on {a.samples} held back")
    print(f"   guard: {a.decision}: {a.reason}")
    print(f"   real input: {brought.check(r, out)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(brought.RECIPES), help="Comma-separated recipe names.")
    ap.add_argument("--samples", type=int, default=64, help="Calibration samples per model (--max-samples).")
    ap.add_argument("--work", type=Path, help="Where data and packages go (default: a temporary folder).")
    args = ap.parse_args(argv)
    print(f"machine: {machine_summary(describe_machine(extra_libraries=('tensorflow', 'tensorflow-cpu')))}")
    with tempfile.TemporaryDirectory(prefix="converter-figures-") as tmp:
        work = args.work or Path(tmp)
        for name in args.models.split(","):
            one(name.strip(), work, args.samples)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
