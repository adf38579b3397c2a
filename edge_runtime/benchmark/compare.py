"""Compare a run against a stored per-device reference (benchmarks/reference/<device>.json) within a tolerance.

Checked per variant id present in both: p50 latency (higher is worse), file size (larger is worse); per
(variant, baseline) pair: the interleaved speedup (lower is worse); and named suite figures. Absolute latencies
are only judged when the CPU model matches the reference's; ratios are judged everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.schema import BenchReport
from edge_runtime.errors import validation_message

Status = Literal["ok", "regression", "improvement", "info"]
# Suite figures where a larger value is better; the others (overheads, size ratios) are better smaller.
HIGHER_IS_BETTER_SUFFIXES = ("speedup", "_fps")
# Suite figures in absolute units: judged only on the reference's CPU model.
ABSOLUTE_SUFFIXES = ("_ms", "_fps")


@dataclass(frozen=True)
class CompareRow:
    subject: str
    metric: str
    reference: float
    current: float
    change: float  # current / reference - 1
    status: Status


@dataclass
class CompareOutcome:
    rows: list[CompareRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[CompareRow]:
        return [r for r in self.rows if r.status == "regression"]


def load_reference(path: str | Path) -> BenchReport:
    """Read a reference JSON written by `bench --json` or `run_suite.py --json`."""
    path = Path(path)
    try:
        return BenchReport.model_validate_json(path.read_bytes())
    except FileNotFoundError as exc:
        raise BenchmarkError(f"reference {path} does not exist") from exc
    except ValidationError as exc:
        raise BenchmarkError(f"reference {path} is not a bench result ({validation_message(exc)})") from exc


def _row(subject: str, metric: str, ref: float, cur: float, tol: float, higher_better: bool, judge: bool) -> CompareRow:
    change = cur / ref - 1.0 if ref else 0.0
    worse = -change if higher_better else change
    status: Status = "ok"
    if not judge:
        status = "info"
    elif worse > tol:
        status = "regression"
    elif worse < -tol:
        status = "improvement"
    return CompareRow(subject, metric, ref, cur, change, status)


def compare(current: BenchReport, reference: BenchReport, tolerance: float) -> CompareOutcome:
    """Judge `current` against `reference`; a change worse than `tolerance` (relative) is a regression."""
    if tolerance < 0:
        raise BenchmarkError("--tolerance must be >= 0")
    out = CompareOutcome()
    same_cpu = current.machine.cpu_model == reference.machine.cpu_model
    if not same_cpu:
        out.notes.append(
            f"reference CPU '{reference.machine.cpu_model}' differs from this CPU '{current.machine.cpu_model}': "
            "absolute latencies are shown but not judged; ratios and sizes are")
    for ref_v in reference.variants:
        cur_v = current.variant(ref_v.id)
        if ref_v.status != "ok" or cur_v is None or cur_v.status != "ok":
            if ref_v.status == "ok":
                out.notes.append(f"{ref_v.id}: in the reference but not measured now")
            continue
        if ref_v.latency and cur_v.latency:
            out.rows.append(_row(ref_v.id, "p50_ms", ref_v.latency.p50_ms, cur_v.latency.p50_ms, tolerance, False,
                                 same_cpu))
        if ref_v.file_size_bytes and cur_v.file_size_bytes:
            out.rows.append(_row(ref_v.id, "file_size_bytes", ref_v.file_size_bytes, cur_v.file_size_bytes,
                                 tolerance, False, True))
    cur_ratios = {(r.variant, r.baseline): r for r in current.ratios}
    for ref_r in reference.ratios:
        cur_r = cur_ratios.get((ref_r.variant, ref_r.baseline))
        if cur_r is not None:
            out.rows.append(_row(f"{ref_r.variant} vs {ref_r.baseline}", "speedup", ref_r.speedup, cur_r.speedup,
                                 tolerance, True, True))
    for name, ref_value in reference.figures.items():
        if name in current.figures:
            higher = name.endswith(HIGHER_IS_BETTER_SUFFIXES)
            judge = same_cpu or not name.endswith(ABSOLUTE_SUFFIXES)
            out.rows.append(_row("figure", name, ref_value, current.figures[name], tolerance, higher, judge))
    return out


def format_outcome(outcome: CompareOutcome, reference_label: str, tolerance: float) -> str:
    """Terminal text: one line per checked figure, then the verdict."""
    lines = [f"Compared with {reference_label} (tolerance {tolerance:.0%}):"]
    width = max((len(r.subject) for r in outcome.rows), default=10)
    for r in outcome.rows:
        lines.append(f"  {r.subject:<{width}}  {r.metric:<16} ref {r.reference:>12.4g}  now {r.current:>12.4g}  "
                     f"{r.change:+7.1%}  {r.status}")
    lines += [f"  note: {n}" for n in outcome.notes]
    n = len(outcome.regressions)
    lines.append(f"  {n} regression{'s' if n != 1 else ''} beyond tolerance" if n else "  no regression")
    return "\n".join(lines)
