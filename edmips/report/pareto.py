"""The accuracy/bits Pareto plot of a sweep."""

from pathlib import Path

from matplotlib.figure import Figure

from edmips.report.plotting import save

_NETWORK_STYLE = {
    "searched": ("o", "-"),
    "uniform": ("s", "--"),
    "random": ("^", ":"),
    "sensitivity": ("D", "-."),
    "micronet": ("P", "none"),
}


def plot_pareto(points: list[dict], path, ylabel: str = "test accuracy") -> Path:
    """Accuracy against equivalent bits, one line per group.

    `points`: dicts with "group" (line label), "bits", "acc", "label" (point annotation) and
    optionally "network": searched (solid, circles), uniform (dashed, squares), random
    (dotted, triangles), sensitivity (dash-dotted, diamonds) or micronet (plus signs, a policy:
    no line); a float network's accuracy is a horizontal line, the ceiling.
    """
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    for k, (group, members) in enumerate(sorted(groups.items())):
        if members[0].get("network") == "float":  # 32 bits: off the scale, a ceiling instead
            acc = sum(p["acc"] for p in members) / len(members)  # over seeds
            ax.axhline(acc, color=f"C{k}", ls="-.", lw=1, label=f"{group} {acc:.3f}")
            continue
        members.sort(key=lambda p: p["bits"])
        marker, ls = _NETWORK_STYLE[members[0].get("network", "searched")]
        ax.plot(
            [p["bits"] for p in members],
            [p["acc"] for p in members],
            marker=marker,
            ls=ls,
            color=f"C{k}",
            label=group,
        )
        for j, p in enumerate(members):
            # a Pareto line rises to the right, so below-right and above-left of a point are
            # free; alternating them keeps the labels of close points apart
            right = j % 2 == 0
            ax.annotate(
                p["label"],
                (p["bits"], p["acc"]),
                textcoords="offset points",
                xytext=(5, -5) if right else (-5, 5),
                ha="left" if right else "right",
                va="top" if right else "bottom",
                fontsize=7,
                color=f"C{k}",
            )
    if not points:
        ax.text(
            0.5,
            0.5,
            "no run recorded an accuracy",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    else:
        ax.legend(fontsize="small", loc="lower right")  # Pareto lines leave that corner empty
        ax.margins(x=0.12, y=0.12)  # room for the annotations at the ends
    ax.set_xlabel("equivalent bits  sqrt(BitOps / FLOPs)")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(f"{ylabel.capitalize()} against complexity", fontsize="medium")
    return save(fig, path)
