"""Plots as inline SVG text: the report must open with no network and no plotting library at view time.

Two shapes cover every plot of the report: lines over steps (loss, throughput, utilization, per-rank
step times, with optional marked points) and stacked bars (where step time goes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]
W, H, LEFT, RIGHT, TOP, BOTTOM = 460, 270, 62, 12, 28, 64


@dataclass
class Line:
    label: str
    xs: list[float]
    ys: list[float]
    marks: list[tuple[float, float]] = field(default_factory=list)  # points drawn as red rings (stragglers)
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / count
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if m * step >= raw)
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int(math.ceil((hi - first) / step)) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.4g}"


def _frame(title: str, xlabel: str, ylabel: str, xt: list[float], yt: list[float], sx, sy, xfmt=_fmt) -> list[str]:
    out = [f'<text x="{W / 2}" y="17" text-anchor="middle" font-size="13" font-weight="bold">{escape(title)}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{W - LEFT - RIGHT}" height="{H - TOP - BOTTOM}" fill="none" stroke="#999"/>']
    for t in yt:
        y = sy(t)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                   f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" font-size="10">{_fmt(t)}</text>')
    for t in xt:
        x = sx(t)
        out.append(f'<text x="{x:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle" font-size="10">{escape(xfmt(t))}</text>')
    out.append(f'<text x="{W / 2}" y="{H - BOTTOM + 28}" text-anchor="middle" font-size="11">{escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{(TOP + H - BOTTOM) / 2}" text-anchor="middle" font-size="11" '
               f'transform="rotate(-90 12 {(TOP + H - BOTTOM) / 2})">{escape(ylabel)}</text>')
    return out


def _legend(labels: list[str], colors: list[str]) -> list[str]:
    out, x, y = [], LEFT, H - 18
    for label, color in zip(labels, colors):
        text = label if len(label) <= 34 else label[:33] + "…"
        width = 18 + 6.2 * len(text)
        if x + width > W and x > LEFT:
            x, y = LEFT, y + 13
        out.append(f'<rect x="{x}" y="{y - 8}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{x + 13}" y="{y + 1}" font-size="10">{escape(text)}</text>')
        x += width
    return out


def _svg(body: list[str], title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
            f'role="img" aria-label="{escape(title)}" font-family="sans-serif">' + "".join(body) + "</svg>")


def line_chart(title: str, lines: list[Line], xlabel: str = "step", ylabel: str = "", log_y: bool = False) -> str:
    """Lines over a shared x axis; an empty chart says so instead of drawing axes around nothing."""
    lines = [ln for ln in lines if ln.xs]
    if not lines:
        return _svg([f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" font-size="12" fill="#888">'
                     f'{escape(title)}: no data in this run</text>'], title)
    tf = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    xs = [x for ln in lines for x in ln.xs]
    ys = [tf(y) for ln in lines for y in ln.ys]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x1 = x0 + 1
    xt = [t for t in nice_ticks(x0, x1) if x0 <= t <= x1] or [x0]
    yt = nice_ticks(min(ys), max(ys))
    y0, y1 = yt[0], yt[-1] if yt[-1] > yt[0] else yt[0] + 1
    sx = lambda v: LEFT + (v - x0) / (x1 - x0) * (W - LEFT - RIGHT)
    sy = lambda v: H - BOTTOM - (tf(v) - y0) / (y1 - y0) * (H - TOP - BOTTOM)
    sy_t = lambda t: H - BOTTOM - (t - y0) / (y1 - y0) * (H - TOP - BOTTOM)
    body = _frame(title, xlabel, ylabel + (" (log10)" if log_y else ""), xt, yt, sx, sy_t)
    colors = [COLORS[i % len(COLORS)] for i in range(len(lines))]
    for ln, color in zip(lines, colors):
        points = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(ln.xs, ln.ys))
        dash = ' stroke-dasharray="5,3"' if ln.dashed else ""
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8"{dash} points="{points}"/>')
        if len(ln.xs) == 1:
            body.append(f'<circle cx="{sx(ln.xs[0]):.1f}" cy="{sy(ln.ys[0]):.1f}" r="3" fill="{color}"/>')
        for x, y in ln.marks:
            body.append(f'<circle class="mark" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="5" fill="none" stroke="#d00" stroke-width="2"/>')
    body += _legend([ln.label for ln in lines], colors)
    return _svg(body, title)


def stacked_bars(title: str, groups: list[str], stacks: dict[str, list[float]], ylabel: str = "") -> str:
    """One bar per group, split into the named parts (each list has one value per group)."""
    if not groups or not stacks:
        return line_chart(title, [])
    totals = [sum(values[i] for values in stacks.values()) for i in range(len(groups))]
    yt = nice_ticks(0.0, max(totals) or 1.0)
    top = yt[-1]
    sy = lambda v: H - BOTTOM - v / top * (H - TOP - BOTTOM)
    slot = (W - LEFT - RIGHT) / len(groups)
    body = _frame(title, "", ylabel, [], yt, lambda v: v, sy)
    colors = [COLORS[i % len(COLORS)] for i in range(len(stacks))]
    for g, group in enumerate(groups):
        base, x = 0.0, LEFT + g * slot + slot * 0.2
        for (part, values), color in zip(stacks.items(), colors):
            v = values[g]
            if v > 0:
                body.append(f'<rect x="{x:.1f}" y="{sy(base + v):.1f}" width="{slot * 0.6:.1f}" height="{sy(base) - sy(base + v):.1f}" '
                            f'fill="{color}"><title>{escape(part)}: {_fmt(v)}</title></rect>')
            base += v
        label = group if len(group) <= 22 else group[:21] + "…"
        body.append(f'<text x="{x + slot * 0.3:.1f}" y="{H - BOTTOM + 14}" text-anchor="middle" font-size="10">{escape(label)}</text>')
    body += _legend(list(stacks), colors)
    return _svg(body, title)
