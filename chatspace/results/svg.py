"""Small inline-SVG charts for self-contained reports: lines, scatters, bars, histograms, box
plots.

Each function returns one ``<svg class="chart">`` string, or None when there is nothing to
draw (the report then says so in words). Every drawn datum is an element of class ``mark``
with a ``<title>`` tooltip, so a page can be checked for charts that drew nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

import numpy as np

WIDTH, HEIGHT = 680, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 170, 34, 58
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _tick_text(tick: float, ticks: Sequence[float]) -> str:
    """A tick label with as many decimals as the tick spacing needs."""
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if abs(tick) >= 1e5 or step == 0:
        return f"{tick:.3g}"
    decimals = len(f"{step:.10f}".rstrip("0").split(".")[1])
    return f"{tick:.{decimals}f}"


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high):
        return [0.0]
    if high <= low:
        pad = abs(low) * 0.05 or 1.0
        low, high = low - pad, high + pad
    step = 10 ** math.floor(math.log10((high - low) / count))
    for factor in (1, 2, 2.5, 5, 10):
        if (high - low) / (step * factor) <= count:
            step *= factor
            break
    first = math.floor(low / step) * step
    return [first + i * step for i in range(int(math.ceil((high - first) / step)) + 1)]


class _Frame:
    """Axes, title and legend around a plot area mapping data to pixels."""

    def __init__(self, title: str, y_low: float, y_high: float, y_label: str,
                 x_low: float = 0.0, x_high: float = 1.0, x_label: str = "",
                 from_zero: bool = True):
        self.y_ticks = nice_ticks(min(y_low, 0.0) if from_zero else y_low, y_high)
        self.y0, self.y1 = self.y_ticks[0], self.y_ticks[-1]
        self.x0, self.x1 = x_low, x_high if x_high > x_low else x_low + 1
        self.parts = [f'<text x="{WIDTH / 2}" y="20" class="title">{escape(title)}</text>']
        self.y_label, self.x_label = y_label, x_label

    def x(self, value: float) -> float:
        return LEFT + (value - self.x0) / (self.x1 - self.x0) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        span = (self.y1 - self.y0) or 1.0
        return HEIGHT - BOTTOM - (value - self.y0) / span * (HEIGHT - TOP - BOTTOM)

    def x_ticks(self, ticks: Sequence[float] | None = None) -> None:
        ticks = ticks if ticks is not None else nice_ticks(self.x0, self.x1)
        for tick in ticks:
            if self.x0 <= tick <= self.x1:
                self.label(self.x(tick), HEIGHT - BOTTOM + 16, _tick_text(tick, ticks),
                           "middle")

    def label(self, x: float, y: float, text: str, anchor: str = "start",
              rotate: bool = False) -> None:
        turn = f' transform="rotate(-30 {x:.1f} {y:.1f})"' if rotate else ""
        self.parts.append(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}"{turn}>'
                          f"{escape(text)}</text>")

    def add(self, element: str) -> None:
        self.parts.append(element)

    def render(self, legend: Sequence[str] = ()) -> str:
        axes = [f'<line x1="{LEFT}" y1="{self.y(self.y0)}" x2="{WIDTH - RIGHT}" '
                f'y2="{self.y(self.y0)}" class="axis"/>']
        for tick in self.y_ticks:
            axes.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{self.y(tick):.1f}" '
                        f'y2="{self.y(tick):.1f}" class="grid"/>')
            axes.append(f'<text x="{LEFT - 6}" y="{self.y(tick) + 4:.1f}" '
                        f'text-anchor="end">{_tick_text(tick, self.y_ticks)}</text>')
        axes.append(f'<text x="14" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
                    f'transform="rotate(-90 14 {(TOP + HEIGHT - BOTTOM) / 2})">'
                    f"{escape(self.y_label)}</text>")
        axes.append(f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" '
                    f'text-anchor="middle">{escape(self.x_label)}</text>')
        for i, name in enumerate(legend if len(legend) > 1 else ()):
            y = TOP + 14 * i
            axes.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{y}" width="10" height="10" '
                        f'fill="{color(i)}"/><text x="{WIDTH - RIGHT + 26}" y="{y + 9}">'
                        f"{escape(name[:24])}</text>")
        return (f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
                f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
                + "".join(axes + self.parts) + "</svg>")


def line_chart(title: str, series: dict[str, list[tuple[float, float]]], x_label: str,
               y_label: str, whole_x: bool = False) -> str | None:
    """Lines through each series' points (x sorted); `whole_x`: x ticks at integers only."""
    points = [p for values in series.values() for p in values]
    if not points:
        return None
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    frame = _Frame(title, min(ys), max(ys), y_label, min(min(xs), 0.0), max(xs), x_label)
    ticks = nice_ticks(frame.x0, frame.x1)
    frame.x_ticks([t for t in ticks if t == int(t)] if whole_x else ticks)
    for i, (name, values) in enumerate(series.items()):
        values = sorted(values)
        path = " ".join(f"{'M' if k == 0 else 'L'}{frame.x(x):.1f},{frame.y(y):.1f}"
                        for k, (x, y) in enumerate(values))
        frame.add(f'<path d="{path}" fill="none" stroke="{color(i)}" stroke-width="1.5"/>')
        for x, y in values:
            frame.add(f'<circle class="mark" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="3" '
                      f'fill="{color(i)}"><title>{escape(name)}: {_fmt(x)}, {_fmt(y)}</title>'
                      "</circle>")
    return frame.render(list(series))


def scatter(title: str, points: dict[str, tuple[float, float]], x_label: str,
            y_label: str) -> str | None:
    """One labelled dot per name (e.g. each group on two principal components)."""
    if not points:
        return None
    xs, ys = [x for x, _ in points.values()], [y for _, y in points.values()]
    pad = (max(xs) - min(xs)) * 0.1 or 1.0
    frame = _Frame(title, min(ys), max(ys), y_label, min(xs) - pad, max(xs) + pad, x_label,
                   from_zero=False)
    frame.x_ticks()
    for i, (name, (x, y)) in enumerate(points.items()):
        frame.add(f'<circle class="mark" cx="{frame.x(x):.1f}" cy="{frame.y(y):.1f}" r="5" '
                  f'fill="{color(i)}"><title>{escape(name)}: {_fmt(x)}, {_fmt(y)}</title>'
                  "</circle>")
        frame.label(frame.x(x) + 7, frame.y(y) + 4, name[:20])
    return frame.render()


def bar_chart(title: str, categories: list[str], series: dict[str, list[float]],
              y_label: str, stacked: bool = False) -> str | None:
    if not categories or not series:
        return None
    totals = ([sum(v) for v in zip(*series.values(), strict=True)] if stacked else
              [v for values in series.values() for v in values])
    frame = _Frame(title, min(0.0, *totals), max(0.0, *totals) or 1.0, y_label)
    slot = (WIDTH - LEFT - RIGHT) / len(categories)
    width = slot * 0.8 / (1 if stacked else len(series))
    base = [0.0] * len(categories)
    for i, (name, values) in enumerate(series.items()):
        for k, value in enumerate(values):
            x = LEFT + slot * k + slot * 0.1 + (0 if stacked else width * i)
            low, high = base[k], base[k] + value
            top, bottom = frame.y(max(low, high)), frame.y(min(low, high))
            frame.add(f'<rect class="mark" x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" '
                      f'height="{max(bottom - top, 0.5):.1f}" fill="{color(i)}"><title>'
                      f"{escape(categories[k])} · {escape(name)}: {_fmt(value)}</title></rect>")
            if stacked:
                base[k] = high
    step = max(1, len(categories) // 24)
    for k in range(0, len(categories), step):
        frame.label(LEFT + slot * (k + 0.5), HEIGHT - BOTTOM + 14, categories[k][:18], "end",
                    rotate=True)
    return frame.render(list(series))


def histogram(title: str, series: dict[str, Sequence[float]], x_label: str,
              bins: int = 30) -> str | None:
    values = {k: np.asarray([v for v in vs if v is not None and math.isfinite(v)], float)
              for k, vs in series.items()}
    values = {k: v for k, v in values.items() if v.size}
    if not values:
        return None
    low = min(float(v.min()) for v in values.values())
    high = max(float(v.max()) for v in values.values())
    if high <= low:
        low, high = low - 0.5 * (abs(low) or 1), high + 0.5 * (abs(high) or 1)
    edges = np.linspace(low, high, bins + 1)
    counts = {k: np.histogram(v, edges)[0] for k, v in values.items()}
    frame = _Frame(title, 0, max(int(c.max()) for c in counts.values()), "rows", low, high,
                   x_label)
    frame.x_ticks()
    for i, (name, count) in enumerate(counts.items()):
        for k, n in enumerate(count):
            if n == 0:
                continue
            x0, x1 = frame.x(edges[k]), frame.x(edges[k + 1])
            frame.add(f'<rect class="mark" x="{x0:.1f}" y="{frame.y(n):.1f}" '
                      f'width="{max(x1 - x0 - 1, 1):.1f}" height="{frame.y(0) - frame.y(n):.1f}"'
                      f' fill="{color(i)}" fill-opacity="{0.9 if len(counts) == 1 else 0.5}">'
                      f"<title>{escape(name)}: {n} in [{_fmt(edges[k])}, {_fmt(edges[k + 1])})"
                      "</title></rect>")
    return frame.render(list(counts))


def box_plot(title: str, groups: list[str], series: dict[str, dict[str, Sequence[float]]],
             y_label: str) -> str | None:
    """One box per group and series: quartiles, median, whiskers at 1.5 IQR, outliers."""
    clean = {name: {g: np.asarray([v for v in by.get(g, []) if v is not None
                                   and math.isfinite(v)], float) for g in groups}
             for name, by in series.items()}
    every = [v for by in clean.values() for v in by.values() if v.size]
    if not groups or not every:
        return None
    frame = _Frame(title, min(float(v.min()) for v in every),
                   max(float(v.max()) for v in every), y_label, from_zero=False)
    slot = (WIDTH - LEFT - RIGHT) / len(groups)
    width = slot * 0.7 / len(clean)
    for i, (name, by) in enumerate(clean.items()):
        for k, group in enumerate(groups):
            data = by[group]
            if not data.size:
                continue
            q1, median, q3 = np.percentile(data, [25, 50, 75])
            reach = 1.5 * (q3 - q1)
            inside = data[(data >= q1 - reach) & (data <= q3 + reach)]
            x = LEFT + slot * k + slot * 0.15 + width * i
            mid = x + width / 2
            tip = (f"<title>{escape(group)} · {escape(name)}: n={data.size}, median "
                   f"{_fmt(median)}, IQR {_fmt(q1)}–{_fmt(q3)}</title>")
            frame.add(f'<line x1="{mid:.1f}" x2="{mid:.1f}" y1="{frame.y(inside.min()):.1f}" '
                      f'y2="{frame.y(inside.max()):.1f}" stroke="#555"/>')
            top, bottom = frame.y(q3), frame.y(q1)
            frame.add(f'<rect class="mark" x="{x:.1f}" y="{top:.1f}" width="{width:.1f}" '
                      f'height="{max(bottom - top, 1):.1f}" fill="{color(i)}" '
                      f'fill-opacity="0.6" stroke="{color(i)}">{tip}</rect>')
            frame.add(f'<line x1="{x:.1f}" x2="{x + width:.1f}" y1="{frame.y(median):.1f}" '
                      f'y2="{frame.y(median):.1f}" stroke="#222" stroke-width="2"/>')
            for value in data[(data < q1 - reach) | (data > q3 + reach)]:
                frame.add(f'<circle cx="{mid:.1f}" cy="{frame.y(value):.1f}" r="2" '
                          f'fill="none" stroke="{color(i)}"/>')
    for k, group in enumerate(groups):
        frame.label(LEFT + slot * (k + 0.5), HEIGHT - BOTTOM + 14, group[:18], "end",
                    rotate=True)
    return frame.render(list(clean))
