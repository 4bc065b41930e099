"""Inline SVG charts for the report page: PR curves, reliability diagrams, heat maps and ΔAP bars.

Each function returns one ``<svg>`` element as a string, with no external reference (fonts are the page's, heat-map
pixels are an embedded PNG), so the page works offline. Coordinates: data in [0, 1] map to the plot box.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape

import numpy as np

__all__ = ["delta_bars", "heatmap", "pr_chart", "reliability_chart"]

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _points(xs: Sequence[float], ys: Sequence[float], x0: float, y0: float, w: float, h: float) -> str:
    return " ".join(f"{x0 + x * w:.1f},{y0 + (1 - y) * h:.1f}" for x, y in zip(xs, ys))


def _frame(x0: float, y0: float, w: float, h: float, *, ticks: bool) -> str:
    parts = [f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>']
    if ticks:
        for v in (0.0, 0.5, 1.0):
            parts.append(f'<text x="{x0 + v * w:.1f}" y="{y0 + h + 11}" class="tick" text-anchor="middle">{v:g}</text>')
            parts.append(
                f'<text x="{x0 - 3}" y="{y0 + (1 - v) * h + 3:.1f}" class="tick" text-anchor="end">{v:g}</text>'
            )
    return "".join(parts)


def pr_chart(
    curves: Sequence[dict],
    *,
    title: str,
    size: tuple[int, int] = (150, 130),
    ticks: bool = False,
    labels: Sequence[str] = (),
) -> str:
    """One precision-recall panel with one curve per model and each curve's operating point as a dot.

    Args:
        curves: ``{"precision": [...], "recall": [...], "operating": (precision, recall)}`` per model.
        title: Panel title (class name and AP).
        size: ``(width, height)`` in pixels.
        ticks: Draw axis ticks and labels (the large micro-averaged panel).
        labels: Legend entries, one per curve (no legend when empty).
    """
    width, height = size
    pad_l, pad_t, pad_r, pad_b = (30 if ticks else 6), 16, 6, (26 if ticks else 6)
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{pad_l}" y="11" class="ptitle">{escape(title)}</text>',
        _frame(pad_l, pad_t, w, h, ticks=ticks),
    ]
    if ticks:
        parts.append(f'<text x="{pad_l + w / 2}" y="{height - 2}" class="tick" text-anchor="middle">recall</text>')
    for i, curve in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        if curve["recall"]:
            pts = _points(curve["recall"], curve["precision"], pad_l, pad_t, w, h)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.3"/>')
        prec, rec = curve["operating"]
        parts.append(
            f'<circle cx="{pad_l + rec * w:.1f}" cy="{pad_t + (1 - prec) * h:.1f}" r="3" fill="{color}" stroke="#fff"/>'
        )
    for i, label in enumerate(labels):  # top right: PR curves start top left and end bottom right
        parts.append(
            f'<text x="{pad_l + w - 6}" y="{pad_t + 12 + 12 * i}" text-anchor="end" class="tick" '
            f'style="fill:{COLORS[i % len(COLORS)]}">● {escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def reliability_chart(
    series: Sequence[dict], *, title: str, labels: Sequence[str], size: tuple[int, int] = (300, 260)
) -> str:
    """Reliability diagram: fraction of positives against mean probability per bin, one line per series.

    Args:
        series: ``{"confidence": [...], "positive_rate": [...], "count": [...]}`` per line (None in empty bins).
        title: Chart title.
        labels: Legend entry per series.
        size: ``(width, height)`` in pixels.
    """
    width, height = size
    x0, y0, w, h = 34, 18, width - 44, height - 48
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{x0}" y="12" class="ptitle">{escape(title)}</text>',
        _frame(x0, y0, w, h, ticks=True),
        f'<line x1="{x0}" y1="{y0 + h}" x2="{x0 + w}" y2="{y0}" stroke="#bbb" stroke-dasharray="4 3"/>',
        f'<text x="{x0 + w / 2}" y="{height - 6}" class="tick" text-anchor="middle">mean probability</text>',
    ]
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        pts = [(c, r) for c, r, n in zip(s["confidence"], s["positive_rate"], s["count"]) if n and c is not None]
        if pts:
            parts.append(
                f'<polyline points="{_points(*zip(*pts), x0, y0, w, h)}" fill="none" stroke="{color}" '
                'stroke-width="1.5"/>'
            )
            parts += [
                f'<circle cx="{x0 + c * w:.1f}" cy="{y0 + (1 - r) * h:.1f}" r="2.5" fill="{color}"/>' for c, r in pts
            ]
        parts.append(
            f'<text x="{x0 + 6}" y="{y0 + 12 + 12 * i}" class="tick" style="fill:{color}">● {escape(labels[i])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _png_data_uri(rgb: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def heatmap(matrix: np.ndarray, class_names: Sequence[str], *, title: str, cell: int | None = None) -> str:
    """A [C, C] matrix in [0, 1] as a heat map (white = 0, dark blue = 1, grey = undefined), labelled by class.

    The cells are one embedded PNG with one pixel per cell, scaled up without smoothing, so 80 classes cost a few KB.
    """
    m = np.asarray(matrix, dtype=np.float64)
    c = m.shape[0]
    cell = cell or max(4, min(14, 560 // max(c, 1)))
    v = np.clip(np.nan_to_num(m, nan=0.0), 0, 1)[..., None]
    rgb = (255 * (1 - v) + np.array([8, 48, 107]) * v).round().astype(np.uint8)  # white -> dark blue
    rgb[np.isnan(m)] = (200, 200, 200)
    label_w = 8 + 6 * max((len(n) for n in class_names), default=1) if cell >= 8 else 8
    size = c * cell
    width, height = label_w + size + 4, 18 + size + 4
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{label_w}" y="12" class="ptitle">{escape(title)}</text>',
        f'<image x="{label_w}" y="18" width="{size}" height="{size}" preserveAspectRatio="none" '
        f'style="image-rendering:pixelated" href="{_png_data_uri(rgb)}"/>',
    ]
    if cell >= 8:  # row labels only when they fit
        parts += [
            f'<text x="{label_w - 3}" y="{18 + (i + 0.75) * cell:.1f}" class="tick" '
            f'text-anchor="end">{escape(n)}</text>'
            for i, n in enumerate(class_names)
        ]
    parts.append("</svg>")
    return "".join(parts)


def delta_bars(names: Sequence[str], deltas: Sequence[float], *, title: str, bar: int = 12) -> str:
    """Horizontal bars of per-class ΔAP (green = better, red = worse), in the given order."""
    d = np.nan_to_num(np.asarray(deltas, dtype=np.float64))
    span = max(float(np.abs(d).max()) if d.size else 1.0, 1e-9)
    label_w = 10 + 6 * max((len(n) for n in names), default=1)
    half = 160
    width, height = label_w + 2 * half + 60, 20 + bar * len(d) + 6
    mid = label_w + half
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" role="img">',
        f"<title>{escape(title)}</title>",
        f'<text x="{label_w}" y="12" class="ptitle">{escape(title)}</text>',
        f'<line x1="{mid}" y1="16" x2="{mid}" y2="{height - 4}" stroke="#999"/>',
    ]
    for i, (name, v) in enumerate(zip(names, d)):
        y = 18 + i * bar
        length = abs(v) / span * half
        x = mid if v >= 0 else mid - length
        color = "#2ca02c" if v >= 0 else "#d62728"
        parts.append(f'<rect x="{x:.1f}" y="{y}" width="{length:.1f}" height="{bar - 2}" fill="{color}"/>')
        parts.append(f'<text x="{label_w - 4}" y="{y + bar - 3}" class="tick" text-anchor="end">{escape(name)}</text>')
        tx = mid + length + 3 if v >= 0 else mid - length - 3
        anchor = "start" if v >= 0 else "end"
        parts.append(f'<text x="{tx:.1f}" y="{y + bar - 3}" class="tick" text-anchor="{anchor}">{v:+.2f}</text>')
    parts.append("</svg>")
    return "".join(parts)
