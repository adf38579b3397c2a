"""`bench --choose`: pick the fastest measured candidate whose labelled accuracy is within the profile's budget.

Pure selection over a finished BenchReport (no building, no I/O): each benchmark variant is one candidate
package at one thread count. The budget counts from the reference candidate (the unpruned float model, when
measured): a candidate is kept when its top-1 accuracy is at least reference - max_accuracy_drop. The building
of candidates lives in ``converters.optimize.choose``; this module stays importable on a device.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.schema import BenchReport
from edge_runtime.package.optimization import SelectionInfo, SelectionRow

RULE = "fastest p50 latency among candidates whose labelled top-1 accuracy is within the profile's budget"


@dataclass(frozen=True)
class Candidate:
    """What a candidate package is; ``package`` is its directory (None: it could not be built)."""

    key: str  # e.g. onnx/int8/p0.3
    format: str
    precision: str
    prune_ratio: float
    package: str | None
    note: str | None = None


def _row(c: Candidate, threads: int, p50: float | None, acc: float | None, size: int | None, ok: bool,
         note: str | None) -> SelectionRow:  # fmt: skip
    return SelectionRow(candidate=f"{c.key}/t{threads}", format=c.format, precision=c.precision,
                        prune_ratio=c.prune_ratio, threads=threads, p50_ms=p50, top1_accuracy=acc,
                        size_bytes=size, within_budget=ok, note=note)  # fmt: skip


def select(report: BenchReport, candidates: list[Candidate], variant_of: dict[str, tuple[str, int]],
           max_drop: float, machine: str) -> tuple[SelectionInfo, Candidate]:  # fmt: skip
    """The selection table and the winner. ``variant_of``: bench variant id -> (candidate key, threads)."""
    by_key = {c.key: c for c in candidates}
    measured = []
    for v in report.variants:
        if v.id not in variant_of:
            continue
        key, threads = variant_of[v.id]
        acc = v.accuracy.top1_accuracy if v.accuracy else None
        p50 = v.latency.p50_ms if v.status == "ok" and v.latency else None
        measured.append((by_key[key], threads, p50, acc, v.file_size_bytes, v.reason if v.status != "ok" else None))
    ref = _reference(measured)
    rows, best = [], None
    for c, threads, p50, acc, size, why in measured:
        note = why
        ok = p50 is not None and acc is not None and ref is not None and acc >= ref - max_drop - 1e-12
        if p50 is not None and acc is None:
            note = "no labelled accuracy"
        elif p50 is not None and not ok:
            note = f"accuracy {acc:.4f} below {ref - max_drop:.4f} (reference {ref:.4f} - budget {max_drop:g})"
        rows.append(_row(c, threads, p50, acc, size, ok, note))
        if ok and (best is None or p50 < best[2]):  # type: ignore[operator]
            best = (c, threads, p50)
    rows += [_row(c, 1, None, None, None, False, c.note or "not built") for c in candidates if c.package is None]
    if best is None:
        raise BenchmarkError("no candidate is within the accuracy budget with labelled validation data: "
                             "see the table above; give labelled --validation data or a larger budget")  # fmt: skip
    chosen, threads, _ = best
    info = SelectionInfo(rule=RULE, reference_accuracy=ref, max_accuracy_drop=max_drop,
                         chosen=f"{chosen.key}/t{threads}", threads=threads, machine=machine,
                         rows=tuple(rows))  # fmt: skip
    return info, chosen


def _reference(measured: list) -> float | None:  # type: ignore[type-arg]
    """Accuracy of the unpruned float candidate (best over thread counts), else of the best unpruned one."""
    for want in ("float32", None):
        accs = [acc for c, _, p50, acc, _, _ in measured if acc is not None and p50 is not None
                and c.prune_ratio == 0 and (want is None or c.precision == want)]  # fmt: skip
        if accs:
            return max(accs)
    return None


def format_selection(info: SelectionInfo) -> str:
    """The table that justified the choice, for the terminal."""
    head = f"{'candidate':<26} {'p50 ms':>8} {'top-1':>7} {'size kB':>8}  decision"
    lines = [f"choose: {info.rule}",
             f"choose: reference accuracy {_pct(info.reference_accuracy)}, budget {info.max_accuracy_drop:g}; "
             f"measured on {info.machine}", head]  # fmt: skip
    rows = sorted(info.rows, key=lambda r: (r.p50_ms is None, r.p50_ms or 0.0))
    for r in rows:
        mark = "CHOSEN" if r.candidate == info.chosen else ("kept" if r.within_budget else (r.note or "excluded"))
        p50 = f"{r.p50_ms:8.3f}" if r.p50_ms is not None else f"{'-':>8}"
        size = f"{r.size_bytes / 1e3:8.1f}" if r.size_bytes else f"{'-':>8}"
        lines.append(f"{r.candidate:<26} {p50} {_pct(r.top1_accuracy):>7} {size}  {mark}")
    return "\n".join(lines)


def selection_table(info: SelectionInfo) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the selection table, for the HTML report."""
    header = ["candidate", "p50 ms", "top-1", "size kB", "decision"]
    rows = [[r.candidate, "-" if r.p50_ms is None else f"{r.p50_ms:.3f}", _pct(r.top1_accuracy),
             "-" if not r.size_bytes else f"{r.size_bytes / 1e3:.1f}",
             "CHOSEN" if r.candidate == info.chosen else ("kept" if r.within_budget else (r.note or "excluded"))]
            for r in sorted(info.rows, key=lambda r: (r.p50_ms is None, r.p50_ms or 0.0))]  # fmt: skip
    return header, rows


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"
