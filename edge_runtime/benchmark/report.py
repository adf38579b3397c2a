"""Bench output: the terminal table, and a report folder with PNG plots and one self-contained HTML file.

matplotlib (the 'bench' extra) is imported inside the plotting functions, with the Agg backend, so the table
and JSON work without it.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path

from edge_runtime.benchmark import BenchmarkError
from edge_runtime.benchmark.schema import BenchReport, VariantResult
from edge_runtime.fsutil import atomic_write_bytes, atomic_write_text

_MB = 1024 * 1024
Table = tuple[list[str], list[list[str]]]


def _fmt(x: float | None, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    return format(x, ".3f" if spec == ".2f" and abs(x) < 1 else spec)


def _quality(v: VariantResult) -> str:
    a = v.accuracy
    if a is None:
        return "-"
    parts = []
    if a.top1_accuracy is not None:
        parts.append(f"acc {a.top1_accuracy:.3f}")
    if a.top1_agreement is not None:
        parts.append(f"agree {a.top1_agreement:.3f}")
    return " ".join(parts) or ("n/a: " + (a.note or "")[:32])


def table_rows(report: BenchReport) -> tuple[list[str], list[list[str]]]:
    """Header and rows shared by the terminal table and the HTML table."""
    speedups = {r.variant: r for r in report.ratios}
    header = ["variant", "status", "load ms", "p50 ms", "p90 ms", "p99 ms", "max ms", "IQR %", "inf/s", "size MB",
              "RSS MB", "quality", "speedup"]
    rows = []
    for v in report.variants:
        if v.status != "ok" or v.latency is None:
            rows.append([v.id, "skipped", *["-"] * 10, v.reason or ""])
            continue
        lat, r = v.latency, speedups.get(v.id)
        speed = "baseline" if r is None and report.ratios else (
            f"{r.speedup:.2f}x [{r.speedup_q1:.2f}-{r.speedup_q3:.2f}]" if r else "-")
        rows.append([
            v.id, "ok", _fmt(v.load_ms, ".0f"), _fmt(lat.p50_ms), _fmt(lat.p90_ms), _fmt(lat.p99_ms),
            _fmt(lat.max_ms), _fmt(100 * lat.rel_spread, ".1f"), _fmt(v.throughput_ips, ".1f"),
            _fmt(v.file_size_bytes / _MB if v.file_size_bytes else None), _fmt(
                v.peak_rss_bytes / _MB if v.peak_rss_bytes else None, ".0f"), _quality(v), speed,
        ])
    return header, rows


def format_table(report: BenchReport) -> str:
    """Plain-text table; a skipped row carries its reason in the last column."""
    header, rows = table_rows(report)
    widths = [len(h) for h in header]
    for r in rows:
        for i in range(len(header) if r[1] == "ok" else 1):
            widths[i] = max(widths[i], len(r[i]))
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    for r in rows:
        if r[1] == "skipped":
            lines.append(f"{r[0].ljust(widths[0])}  skipped: {r[-1]}")
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    lines.append(f"machine: {report.machine.describe()}")
    lines += [f"warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError as exc:
        raise BenchmarkError("--report needs matplotlib: pip install 'edge-runtime[bench]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> bytes:  # type: ignore[no-untyped-def]
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def plot_latency(samples_ms: dict[str, list[float]], path: Path) -> bytes:
    """Latency distribution per variant (box plot over every timed inference, whiskers at p1/p99)."""
    plt = _pyplot()
    ids = list(samples_ms)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(ids) + 1.5))
    data = [samples_ms[i] for i in ids]
    style = {"whis": (1, 99), "showfliers": True, "flierprops": {"markersize": 2, "alpha": 0.4}}
    try:
        ax.boxplot(data, orientation="horizontal", **style)  # matplotlib >= 3.10
    except TypeError:
        ax.boxplot(data, vert=False, **style)
    ax.set_yticks(range(1, len(ids) + 1), ids)
    ax.set_xlabel("latency per inference (ms)")
    ax.set_title("Latency distribution per variant (box: IQR, whiskers: p1-p99)")
    ax.grid(axis="x", alpha=0.3)
    png = _save(fig, path)
    plt.close(fig)
    return png


def plot_speed_quality(report: BenchReport, path: Path) -> bytes:
    """p50 latency against quality (agreement or accuracy) or, without validation data, against file size."""
    plt = _pyplot()
    ok = [v for v in report.variants if v.status == "ok" and v.latency]
    has_q = any(v.accuracy and (v.accuracy.top1_agreement is not None or v.accuracy.top1_accuracy is not None)
                for v in ok)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in ok:
        assert v.latency is not None
        if has_q:
            a = v.accuracy
            y = None if a is None else (a.top1_accuracy if a.top1_accuracy is not None else a.top1_agreement)
        else:
            y = v.file_size_bytes / _MB if v.file_size_bytes else None
        if y is None:
            continue
        ax.errorbar(v.latency.p50_ms, y, xerr=[[v.latency.p50_ms - v.latency.min_ms],
                                               [v.latency.p90_ms - v.latency.p50_ms]], fmt="o", capsize=3)
        ax.annotate(v.id, (v.latency.p50_ms, y), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("p50 latency (ms), bars min..p90")
    labelled = any(v.accuracy and v.accuracy.top1_accuracy is not None for v in ok)
    ax.set_ylabel(("top-1 accuracy (labels)" if labelled else "top-1 agreement with baseline") if has_q
                  else "model file size (MB)")
    ax.set_title("Speed against " + ("accuracy" if has_q else "size"))
    ax.grid(alpha=0.3)
    data = _save(fig, path)
    plt.close(fig)
    return data


def _table(header: list[str], rows: list[list[str]]) -> str:
    esc = html.escape
    thead = "".join(f"<th>{esc(h)}</th>" for h in header)
    return f"<table><tr>{thead}</tr>" + "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


def _html(report: BenchReport, images: dict[str, bytes], tables: Mapping[str, Table] | None = None) -> str:
    header, rows = table_rows(report)
    esc = html.escape
    extra = "".join(f"<h2>{esc(title)}</h2>{_table(*t)}" for title, t in (tables or {}).items())
    thead = "".join(f"<th>{esc(h)}</th>" for h in header)
    tbody = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    machine = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>"
                      for k, v in report.machine.model_dump().items())
    figures = "".join(f"<li>{esc(k)}: {v:.4g}</li>" for k, v in report.figures.items())
    warns = "".join(f"<li>{esc(w)}</li>" for w in report.warnings)
    imgs = "".join(f'<h2>{esc(name)}</h2><img alt="{esc(name)}" src="data:image/png;base64,'
                   f'{base64.b64encode(data).decode()}">' for name, data in images.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edge-runtime bench {esc(report.created)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>edge-runtime bench</h1><p>{esc(report.created)} {esc(report.reference_name or "")}</p>
{extra}<h2>Results</h2><table><tr>{thead}</tr>{tbody}</table>
{f"<h2>Figures</h2><ul>{figures}</ul>" if figures else ""}
{f"<h2>Warnings</h2><ul>{warns}</ul>" if warns else ""}
{imgs}
<h2>Machine</h2><table>{machine}</table>
<h2>Settings</h2><pre>{esc(report.settings.model_dump_json(indent=2))}</pre>
</body></html>
"""


def write_report(report: BenchReport, samples_ms: dict[str, list[float]], out_dir: str | Path,
                 tables: Mapping[str, Table] | None = None) -> list[Path]:
    """Write latency.png, speed_quality.png and report.html (PNGs inlined, no external files) into out_dir;
    ``tables`` (title -> header, rows) go first in the HTML, e.g. the table `bench --choose` chose by."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images: dict[str, bytes] = {}
    written = []
    if samples_ms:
        images["Latency distribution"] = plot_latency(samples_ms, out / "latency.png")
        images["Speed against quality"] = plot_speed_quality(report, out / "speed_quality.png")
        written += [out / "latency.png", out / "speed_quality.png"]
    atomic_write_text(out / "report.html", _html(report, images, tables))
    written.append(out / "report.html")
    return written
