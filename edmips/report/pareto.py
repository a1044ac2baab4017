"""The Pareto plot of a sweep: accuracy against one recorded cost (edmips.report.costs).

Seeds of one budget are one network, not a curve: each (kind, budget) is one marker at the mean
over its seeds, with their spread (min to max) as error bars in both cost and accuracy, and a
kind's line joins its budgets in order of cost. A line through the seeds themselves zig-zags
between their slightly different costs (1.98, 2.01 bits) and reads as a trade-off that is not
there. Labels are placed where they collide with nothing (edmips.report.labels), the legend sits
outside the axes so that it covers no marker.
"""

import statistics
from dataclasses import dataclass
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter
from matplotlib.transforms import Bbox

from edmips.report.costs import DEFAULT, axis, size_unit
from edmips.report.labels import place_labels
from edmips.report.plotting import save

_NETWORK_STYLE = {
    "searched": ("o", "-"),
    "uniform": ("s", "--"),
    "random": ("^", ":"),
    "sensitivity": ("D", "-."),
    "calibration_search": ("v", "-."),
    "micronet": ("P", "none"),  # a seed's fixed policy: no budgets to join
}
MARKER_PX = 6  # half the side of the box a marker keeps free of labels
LINE_SAMPLES = 16  # boxes along each line segment: labels keep off the lines too


@dataclass(frozen=True)
class Marker:
    """One (kind, budget): the mean over its seeds and their extent."""

    label: str
    n: int
    x: float
    x_lo: float
    x_hi: float
    acc: float
    acc_lo: float
    acc_hi: float


def markers(members: list[dict], scale: float = 1.0) -> list[Marker]:
    """A kind's points as one Marker per budget, in order of cost."""
    budgets: dict[str, list[dict]] = {}
    for p in members:
        budgets.setdefault(p["budget"], []).append(p)
    out = []
    for seeds in budgets.values():
        xs, accs = [p["x"] / scale for p in seeds], [p["acc"] for p in seeds]
        label = seeds[0]["label"] + (f", n={len(seeds)}" if len(seeds) > 1 else "")
        out.append(
            Marker(
                label, len(seeds), statistics.fmean(xs), min(xs), max(xs),
                statistics.fmean(accs), min(accs), max(accs),
            )
        )  # fmt: skip
    return sorted(out, key=lambda m: m.x)


def pareto_figure(points: list[dict], ylabel: str = "test accuracy", x: str = DEFAULT) -> Figure:
    """Accuracy against cost `x`, one line per group.

    `points`: dicts with "group" (line label), "budget" (which seeds are one network), "x" (the
    cost, in the unit the run records it: bits for a memory), "acc", "label" (the annotation)
    and "network": searched (solid, circles), uniform (dashed, squares), random (dotted,
    triangles), sensitivity (dash-dotted, diamonds) or micronet (plus signs, no line); a float
    network's accuracy is a horizontal line, the ceiling.
    """
    spec = axis(x)
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure the labels with, without pyplot
    ax = fig.subplots()
    costs = [p["x"] for p in points if p["network"] != "float"]
    unit, scale = size_unit(max(costs)) if spec.memory and costs else ("", 1)
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    drawn, ceilings = [], []
    # in the order given (the runs': searched, then the baselines, the float ceiling last)
    for k, (group, members) in enumerate(groups.items()):
        colour = f"C{k}"
        if members[0]["network"] == "float":  # 32 bits: off the scale, a ceiling instead
            acc = statistics.fmean(p["acc"] for p in members)  # over seeds
            label = f"{group} {acc:.3f}"
            ceilings.append(ax.axhline(acc, color=colour, ls="-.", lw=1, label=label))
            continue
        ms = markers(members, scale)
        marker, ls = _NETWORK_STYLE[members[0]["network"]]
        ax.errorbar(
            [m.x for m in ms],
            [m.acc for m in ms],
            xerr=[[m.x - m.x_lo for m in ms], [m.x_hi - m.x for m in ms]],
            yerr=[[m.acc - m.acc_lo for m in ms], [m.acc_hi - m.acc for m in ms]],
            marker=marker,
            ls=ls,
            color=colour,
            capsize=3,
            elinewidth=1,
            label=group,
        )
        drawn.append((ms, colour))
    ax.set_xlabel(f"{spec.label} ({unit})" if unit else spec.label)
    if x == "bitops":
        ax.xaxis.set_major_formatter(EngFormatter())
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(f"{ylabel.capitalize()} against {x.replace('_', ' ')}", fontsize="medium")
    if not points:
        ax.text(0.5, 0.5, "no run recorded an accuracy", ha="center", transform=ax.transAxes)
        return fig
    fig.legend(
        loc="outside right upper",  # outside the axes: it can cover no marker
        fontsize="small",
        title="mean over seeds,\nbars: min to max",
        title_fontsize="small",
        frameon=False,
    )
    ax.margins(x=0.15, y=0.15)  # room for the labels at the ends
    # Labels are placed in pixels: lay the figure out once and keep it, limits included, as
    # it is, or the boxes they were kept apart in would move under them.
    fig.canvas.draw()
    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    fig.set_layout_engine("none")
    labels = [(m.x, m.acc, m.label, colour) for ms, colour in drawn for m in ms]
    place_labels(ax, labels, _obstacles(ax, drawn, ceilings))
    return fig


def plot_pareto(points: list[dict], path, ylabel: str = "test accuracy", x=DEFAULT) -> Path:
    """pareto_figure, written as a PNG."""
    return save(pareto_figure(points, ylabel, x), path)


def _obstacles(ax, drawn, ceilings) -> list[Bbox]:
    """What a label must not cover, in display pixels: markers, error bars, lines, ceilings."""
    to_px = ax.transData.transform
    boxes = []
    for ms, _ in drawn:
        for m in ms:
            corners = [(m.x, m.acc), (m.x_lo, m.acc_lo), (m.x_hi, m.acc_hi)]
            (x, y), (x_lo, y_lo), (x_hi, y_hi) = to_px(corners)
            boxes.append(Bbox.from_extents(x, y, x, y).padded(MARKER_PX))
            boxes.append(Bbox.from_extents(x_lo, y - 1, x_hi, y + 1))  # the error bars
            boxes.append(Bbox.from_extents(x - 1, y_lo, x + 1, y_hi))
        for a, b in zip(ms, ms[1:]):
            (x0, y0), (x1, y1) = to_px([(a.x, a.acc), (b.x, b.acc)])
            for t in (i / LINE_SAMPLES for i in range(1, LINE_SAMPLES)):
                x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
                boxes.append(Bbox.from_extents(x - 1.5, y - 1.5, x + 1.5, y + 1.5))
    frame = ax.get_window_extent()
    for line in ceilings:
        y = to_px((0, line.get_ydata()[0]))[1]
        boxes.append(Bbox.from_extents(frame.x0, y - 1, frame.x1, y + 1))
    return boxes
