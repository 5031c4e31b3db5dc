"""Inline SVG for the console: a lineage graph and a time-series line (no JS libraries).

>>> "<polyline" in time_series([0, 1_000_000, 2_000_000], [1.0, 3.0, 2.0], "spent")
True
>>> "user_spend" in lineage({"orders": [], "user_spend": ["orders"]}, {"orders": "source", "user_spend": "pipeline"}, "user_spend")
True
"""

from __future__ import annotations

import datetime
from html import escape

COLORS = {"source": "#dde9f7", "pipeline": "#e6f4ea", "on_demand": "#fdf1dc"}


def lineage(upstream: dict[str, list[str]], kinds: dict[str, str], focus: str | None = None) -> str:
    """Boxes in columns by depth (sources left), arrows from what is read to what reads it."""
    depth: dict[str, int] = {}

    def level(name: str, seen: tuple[str, ...] = ()) -> int:
        if name not in depth:
            ups = [u for u in upstream.get(name, []) if u in upstream and u not in seen]
            depth[name] = 1 + max((level(u, (*seen, name)) for u in ups), default=-1)
        return depth[name]

    for name in upstream:
        level(name)
    columns: dict[int, list[str]] = {}
    for name in sorted(upstream, key=lambda n: (depth[n], n)):
        columns.setdefault(depth[name], []).append(name)
    box_w, box_h, gap_x, gap_y = 170, 34, 60, 16
    pos = {name: (16 + col * (box_w + gap_x), 16 + row * (box_h + gap_y))
           for col, names in columns.items() for row, name in enumerate(names)}
    width = 32 + len(columns) * (box_w + gap_x) - gap_x
    height = 32 + max(len(n) for n in columns.values()) * (box_h + gap_y) - gap_y if columns else 40
    parts = [f'<svg class="lineage" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="lineage graph">',
             '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto">'
             '<path d="M0,0 L8,4 L0,8 z" fill="#557"/></marker></defs>']
    for name, ups in upstream.items():
        for up in ups:
            if up in pos:
                (x1, y1), (x2, y2) = pos[up], pos[name]
                parts.append(f'<line x1="{x1 + box_w}" y1="{y1 + box_h / 2}" x2="{x2}" y2="{y2 + box_h / 2}" '
                             'stroke="#557" marker-end="url(#arrow)"/>')
    for name, (x, y) in pos.items():
        stroke = ' stroke-width="3"' if name == focus else ""
        kind = kinds.get(name, "")
        parts.append(f'<a href="/ui/feature/{escape(name)}"><rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="6" '
                     f'fill="{COLORS.get(kind, "#eee")}" stroke="#14324f"{stroke}/>'
                     f'<text x="{x + 8}" y="{y + 15}">{escape(name)}</text>'
                     f'<text x="{x + 8}" y="{y + 28}" fill="#667">{escape(kind)}</text></a>')
    parts.append("</svg>")
    return "".join(parts)


def time_series(times_us: list[int], values: list[float | None], label: str, width: int = 720, height: int = 240) -> str:
    """A line of ``values`` over ``times_us`` (UTC microseconds), with min/max axis labels."""
    pad_l, pad_r, pad_t, pad_b = 64, 16, 16, 36
    points = [(t, v) for t, v in zip(times_us, values) if v is not None]
    if not points:
        return '<p class="muted">no values to plot</p>'
    t0, t1 = min(t for t, _ in points), max(t for t, _ in points)
    v0, v1 = min(v for _, v in points), max(v for _, v in points)
    span_t, span_v = (t1 - t0) or 1, (v1 - v0) or 1.0
    plot_w, plot_h = width - pad_l - pad_r, height - pad_t - pad_b

    def xy(t: int, v: float) -> str:
        return f"{pad_l + (t - t0) / span_t * plot_w:.1f},{pad_t + plot_h - (v - v0) / span_v * plot_h:.1f}"

    def when(us: int) -> str:
        return datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")

    line = " ".join(xy(t, v) for t, v in points)
    return (
        f'<svg class="series" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{escape(label)} over time">'
        f'<rect x="{pad_l}" y="{pad_t}" width="{plot_w}" height="{plot_h}" fill="#fff" stroke="#ccd"/>'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{line}"/>'
        f'<text x="{pad_l - 6}" y="{pad_t + 10}" text-anchor="end">{v1:.4g}</text>'
        f'<text x="{pad_l - 6}" y="{pad_t + plot_h}" text-anchor="end">{v0:.4g}</text>'
        f'<text x="{pad_l}" y="{height - 12}">{when(t0)}</text>'
        f'<text x="{width - pad_r}" y="{height - 12}" text-anchor="end">{when(t1)}</text>'
        f'<text x="{pad_l + plot_w / 2}" y="{height - 12}" text-anchor="middle">{escape(label)} ({len(points)} points)</text>'
        "</svg>"
    )
