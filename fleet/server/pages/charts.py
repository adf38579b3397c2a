"""Inline SVG line charts, rendered on the server: no script, nothing fetched, readable on a phone."""

from __future__ import annotations

import time
from html import escape
from typing import Any

W, H, PAD = 600, 160, 28
COLOURS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea")


def line_chart(title: str, points: list[dict[str, Any]], fields: list[str], unit: str = "") -> str:
    """One SVG with a polyline per field (points: dicts with ``ts`` and the fields); empty data says so."""
    series = {f: [(p["ts"], p[f]) for p in points if p.get(f) is not None] for f in fields}
    values = [v for s in series.values() for _, v in s]
    head = (f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(title)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(title)}</title>'
            f'<text x="4" y="14" class="ct">{escape(title)}</text>')
    if not values:
        return head + f'<text x="{W // 2}" y="{H // 2}" text-anchor="middle" class="cl">no data</text></svg>'
    ts = [t for s in series.values() for t, _ in s]
    t0, t1 = min(ts), max(ts)
    lo, hi = min(0.0, min(values)), max(values)
    hi = hi if hi > lo else lo + 1.0

    def xy(t: float, v: float) -> str:
        x = PAD + (W - 2 * PAD) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)
        y = H - PAD + (PAD * 2 - H) * (v - lo) / (hi - lo)
        return f"{x:.1f},{y:.1f}"

    parts = [head, f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" class="ax"/>',
             f'<text x="2" y="{PAD + 4}" class="cl">{hi:.3g}{escape(unit)}</text>',
             f'<text x="2" y="{H - PAD}" class="cl">{lo:.3g}</text>',
             f'<text x="{PAD}" y="{H - 8}" class="cl">{time.strftime("%m-%d %H:%M", time.gmtime(t0))}</text>',
             f'<text x="{W - PAD}" y="{H - 8}" text-anchor="end" class="cl">'
             f'{time.strftime("%m-%d %H:%M", time.gmtime(t1))} UTC</text>']
    for i, (f, s) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        if s:
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" '
                         f'points="{" ".join(xy(t, v) for t, v in s)}"/>')
        parts.append(f'<text x="{W - PAD - 110 * (len(fields) - i)}" y="14" fill="{colour}" class="cl">'
                     f'{escape(f)}</text>')
    return "".join(parts) + "</svg>"
