"""Bar charts as plain SVG geometry, drawn by the `_charts.html` macro: no script, nothing
fetched, so they render without JavaScript. Each chart carries a title and a description
naming every number (the page also lists them in a table); each bar carries its label and
value as data attributes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 640
BAR_HEIGHT = 28  # horizontal bars: one row each
BAR_GAP = 10
LABEL_WIDTH = 130  # horizontal bars: room for the labels on the left
PLOT_HEIGHT = 180  # columns: the tallest bar
VALUE_ROOM = 60  # room beside or above a bar for its value


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    x: float
    y: float
    width: float
    height: float
    label_x: float
    label_y: float
    value_x: float
    value_y: float


@dataclass(frozen=True)
class BarChart:
    id: str
    title: str
    description: str
    orientation: str  # "horizontal" or "columns"
    width: int
    height: int
    bars: tuple[Bar, ...]
    # The baseline the bars stand on: x1, y1, x2, y2.
    axis: tuple[float, float, float, float]
    label_anchor: str  # text-anchor of the bar labels


def _describe(title: str, items: Sequence[tuple[str, int]], unit: str) -> str:
    if not items or not any(value for _, value in items):
        return f"{title}: no {unit} yet."
    return f"{title}: " + "; ".join(f"{label}, {value} {unit}" for label, value in items) + "."


def horizontal_bars(
    chart_id: str, title: str, items: Sequence[tuple[str, int]], *, unit: str
) -> BarChart:
    """One bar per item, top to bottom, longest for the largest value: a funnel."""
    top = max((value for _, value in items), default=0) or 1
    room = WIDTH - LABEL_WIDTH - VALUE_ROOM
    bars = []
    for i, (label, value) in enumerate(items):
        y = BAR_GAP + i * (BAR_HEIGHT + BAR_GAP)
        length = room * value / top
        bars.append(
            Bar(
                label=label,
                value=value,
                x=LABEL_WIDTH,
                y=y,
                width=round(length, 1),
                height=BAR_HEIGHT,
                label_x=LABEL_WIDTH - 8,
                label_y=y + BAR_HEIGHT / 2 + 5,
                value_x=round(LABEL_WIDTH + length + 6, 1),
                value_y=y + BAR_HEIGHT / 2 + 5,
            )
        )
    height = BAR_GAP + len(items) * (BAR_HEIGHT + BAR_GAP)
    return BarChart(
        id=chart_id,
        title=title,
        description=_describe(title, items, unit),
        orientation="horizontal",
        width=WIDTH,
        height=height,
        bars=tuple(bars),
        axis=(LABEL_WIDTH, 0, LABEL_WIDTH, height),
        label_anchor="end",
    )


def columns(chart_id: str, title: str, items: Sequence[tuple[str, int]], *, unit: str) -> BarChart:
    """One column per item, left to right, labelled underneath: a distribution."""
    top = max((value for _, value in items), default=0) or 1
    slot = WIDTH / max(len(items), 1)
    baseline = VALUE_ROOM / 2 + PLOT_HEIGHT
    bars = []
    for i, (label, value) in enumerate(items):
        height = PLOT_HEIGHT * value / top
        x = i * slot + slot * 0.15
        bars.append(
            Bar(
                label=label,
                value=value,
                x=round(x, 1),
                y=round(baseline - height, 1),
                width=round(slot * 0.7, 1),
                height=round(height, 1),
                label_x=round(i * slot + slot / 2, 1),
                label_y=baseline + 20,
                value_x=round(i * slot + slot / 2, 1),
                value_y=round(baseline - height - 6, 1),
            )
        )
    return BarChart(
        id=chart_id,
        title=title,
        description=_describe(title, items, unit),
        orientation="columns",
        width=WIDTH,
        height=int(baseline + 32),
        bars=tuple(bars),
        axis=(0, baseline, WIDTH, baseline),
        label_anchor="middle",
    )
