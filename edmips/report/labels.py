"""Point labels that collide with nothing: each is tried at a ring of offsets around its point,
nearest first, and kept at the first place that covers no other label, no obstacle (markers,
error bars, lines) and stays inside the axes; where none is free, the least covered one.

Boxes are measured in display pixels where they are drawn, so the figure must be laid out and
its limits fixed before labels are placed (edmips.report.pareto freezes both).
"""

from matplotlib.transforms import Bbox

RADII = (5, 10, 16, 24, 34)  # offsets in points: the nearest free place reads as the point's
# below-right first: a Pareto line rises to the right, so that side of a point is the freest
DIRECTIONS = ((1, -1), (-1, 1), (1, 1), (-1, -1), (1, 0), (-1, 0), (0, -1), (0, 1))
PAD = 2.0  # pixels kept around a label: a save at another dpi moves glyphs by a pixel or so
LABEL_WEIGHT = 100.0  # covering another label is far worse than grazing a line
OUTSIDE_WEIGHT = 1000.0  # a label cut off by the axes' edge is worse still


def place_labels(ax, labels, obstacles: list[Bbox], fontsize=7) -> list:
    """Annotate `labels`, (x, y, text, colour) in data coordinates, avoiding `obstacles`
    (boxes in display coordinates) and each other; returns the annotations."""
    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    placed, boxes = [], []
    for x, y, text, colour in labels:
        best = None
        for dx, dy in _offsets():
            ann = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                fontsize=fontsize,
                color=colour,
            )
            box = ann.get_window_extent(renderer).padded(PAD)
            cost = _cost(box, boxes, obstacles, frame)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, ann, box)
            else:
                ann.remove()
            if cost == 0:
                break
        placed.append(best[1])
        boxes.append(best[2])
    return placed


def _offsets():
    for r in RADII:
        for dx, dy in DIRECTIONS:
            yield dx * r, dy * r


def _cost(box: Bbox, labels: list[Bbox], obstacles: list[Bbox], frame: Bbox) -> float:
    inside = _area(Bbox.intersection(box, frame))
    return (
        LABEL_WEIGHT * sum(_area(Bbox.intersection(box, b)) for b in labels)
        + sum(_area(Bbox.intersection(box, b)) for b in obstacles)
        + OUTSIDE_WEIGHT * (_area(box) - inside)
    )


def _area(box: Bbox | None) -> float:
    return 0.0 if box is None else box.width * box.height
