"""Figures of one search (EdMIPS figs. 4, 6, 7b), and its sensitivity: what it learned.

Every function writes one PNG and returns its path (edmips/report/plotting.py: what they share;
edmips/report/pareto.py: the Pareto plot of a sweep).
"""

import logging
import math
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import EngFormatter, MaxNLocator

from edmips.cost import model as cost_models
from edmips.records import arch as arch_file
from edmips.records import history as history_file
from edmips.report.plotting import (
    allocation_title,
    bit_colors,
    candidates,
    check_history,
    epoch_axis,
    present,
    run_name,
    save,
    short,
)
from edmips.search.budget import Budget, BudgetPrice

log = logging.getLogger(__name__)

W_COLOR, A_COLOR, MU_COLOR = "tab:blue", "tab:orange", "tab:gray"
# searched bits above / below / about the FLOPs-only ones
_MORE = {True: "tab:green", False: "tab:red", None: "tab:olive"}
_MORE_LABEL = {True: "more bits", False: "fewer bits", None: "as many"}


def plot_bit_allocation(arch: arch_file.Arch, path) -> Path:
    """Per-layer weight and activation bits (fig. 6), with each layer's FLOPs beneath."""
    n = len(arch.layers)
    x = range(n)
    fig = Figure(figsize=(max(6.0, 0.32 * n + 2.5), 5.5), layout="constrained")
    bits_ax, flops_ax = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    width = 0.4
    bits_ax.bar(
        [i - width / 2 for i in x],
        [la.wbits for la in arch.layers],
        width,
        color=W_COLOR,
        label="weights",
    )
    bits_ax.bar(
        [i + width / 2 for i in x],
        [la.abits for la in arch.layers],
        width,
        color=A_COLOR,
        label="activations",
    )
    levels = sorted(
        {b for la in arch.layers for b in (la.wbits, la.abits)}
        | set(arch.space["wbits"])
        | set(arch.space["abits"])
        | set(arch.space.get("sbits", []))
    )
    bits_ax.set_yticks(levels)
    bits_ax.set_ylim(0, max(levels) + 0.8)  # headroom for the legend
    bits_ax.set_ylabel("bits")
    bits_ax.grid(axis="y", alpha=0.3)
    bits_ax.legend(loc="upper left", ncols=2, fontsize="small", frameon=False)
    bits_ax.set_title(allocation_title(arch), fontsize="medium")

    # FLOPs explain the allocation: expensive layers are pushed to fewer bits
    flops_ax.bar(list(x), [la.flops for la in arch.layers], 0.8, color="0.6")
    flops_ax.yaxis.set_major_formatter(EngFormatter())
    flops_ax.yaxis.set_major_locator(MaxNLocator(3))
    flops_ax.set_ylabel("FLOPs")
    flops_ax.set_xticks(list(x))
    flops_ax.set_xticklabels(
        [f"{i} {la.name}" for i, la in enumerate(arch.layers)], rotation=90, fontsize="x-small"
    )
    flops_ax.set_xlim(-0.6, n - 0.4)
    return save(fig, path)


def plot_sensitivity(arch: arch_file.Arch, path) -> Path:
    """What the search learned: each layer's expected bits (w x a, so BitOps per FLOP) under the
    final selectors, beside what the same budget gives it from its FLOPs alone (selectors that
    learned nothing, tilted by the price that meets the budget). Bars above their grey twin are
    layers the loss made worth more bits than their cost alone would grant."""
    spaces_w = [candidates(arch.space["wbits"], len(la.probs_w), la.wbits) for la in arch.layers]
    spaces_a = [
        candidates(list(space), len(la.probs_a), la.abits)
        for la, space in zip(arch.layers, arch.activation_spaces())
    ]
    searched = [
        sum(p * b for p, b in zip(la.probs_w, sw)) * sum(p * b for p, b in zip(la.probs_a, sa))
        for la, sw, sa in zip(arch.layers, spaces_w, spaces_a)
    ]
    bitops, costs = cost_models.get("bitops"), arch.costs()
    flops = [bitops.size(c) for c in costs]
    expected = float(bitops.stated(sum(f * s for f, s in zip(flops, searched)) / sum(flops)))
    budget = Budget(bitops, costs, spaces_w, spaces_a, expected)
    w, a = BudgetPrice(budget).cost_only()
    baseline = (w * a).tolist()
    n = len(arch.layers)
    x = list(range(n))
    fig = Figure(figsize=(max(6.0, 0.32 * n + 2.5), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.4
    ax.bar([i - width / 2 for i in x], baseline, width, color="0.7", label="from FLOPs alone")
    # more / fewer than the FLOPs alone give, or about as many (within 0.05 bit^2)
    more = [None if abs(s - b) < 0.05 else s > b for s, b in zip(searched, baseline)]
    ax.bar([i + width / 2 for i in x], searched, width, color=[_MORE[m] for m in more])
    chosen = [la.wbits * la.abits for la in arch.layers]
    ax.scatter(x, chosen, marker="_", s=120, color="k", label="chosen w x a", zorder=3)
    handles = ax.get_legend_handles_labels()[0] + [
        Patch(color=_MORE[m], label=f"searched: {_MORE_LABEL[m]}")
        for m in (True, None, False)
        if m in more
    ]
    ax.set_ylabel("w x a  (BitOps / FLOPs)")
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{i} {la.name}" for i, la in enumerate(arch.layers)], rotation=90, fontsize="x-small"
    )
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(0, max(searched + baseline + chosen) * 1.25)  # headroom for the legend
    ax.grid(axis="y", alpha=0.3)
    ax.legend(handles=handles, loc="upper left", ncols=2, fontsize="small", frameon=False)
    ax.set_title(
        f"What the search learned: {run_name(arch)}, {expected:.3f} expected bits\n"
        "expected w x a per layer, against what its FLOPs alone would give it",
        fontsize="medium",
    )
    return save(fig, path)


def plot_selector_evolution(history: list[dict], arch: arch_file.Arch, path) -> Path:
    """Each layer's selector probabilities against epoch (fig. 4): one small panel per layer,
    weights in the upper block, activations in the lower one."""
    check_history(history)
    n = len(arch.layers)
    cols = min(n, max(6, math.ceil(1.5 * math.sqrt(n))))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.6 * cols + 1.2, 2 * (1.25 * rows + 0.6)), layout="constrained")
    epochs = [h["epoch"] for h in history]
    for sub, kind, label in zip(
        fig.subfigures(2, 1), ("w", "a"), ("Weights", "Activations"), strict=True
    ):
        spaces = [arch.space["wbits"]] * n if kind == "w" else arch.activation_spaces()
        colors = bit_colors(sorted({b for space in spaces for b in space}))
        axes = sub.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)
        lines = {}
        for i, ax in enumerate(axes.flat):
            if i >= n:
                ax.set_axis_off()
                continue
            layer = arch.layers[i]
            series = list(zip(*(h[f"probs_{kind}"][i] for h in history), strict=True))
            chosen = layer.wbits if kind == "w" else layer.abits
            bits_of = candidates(list(spaces[i]), len(series), chosen)
            for bits, probs in zip(bits_of, series, strict=True):
                (lines[bits],) = ax.plot(
                    epochs,
                    probs,
                    color=colors.get(bits, "k"),
                    lw=1.3,
                    marker="o" if len(epochs) < 12 else None,
                    ms=3,
                )
            ax.set_title(f"{i} {short(layer.name)}: {chosen}b", fontsize=6.5, pad=2)
            ax.set_ylim(-0.05, 1.05)
            ax.tick_params(labelsize=6, length=2)
            epoch_axis(ax, epochs, nbins=3)
        for ax in axes[:, 0]:
            ax.set_ylabel("prob.", fontsize=7)
        for c in range(cols):
            # the lowest panel in use of each column carries the epoch axis
            ax = axes[-1, c] if c < n - (rows - 1) * cols else axes[-2, c]
            ax.set_xlabel("epochs trained", fontsize=7)
            ax.xaxis.set_tick_params(labelbottom=True)
        sub.suptitle(f"{label}: selector probabilities ({arch.model})", fontsize="medium")
        keys = sorted(lines)
        sub.legend(
            [lines[b] for b in keys],
            [f"{b} bit" for b in keys],
            loc="outside right upper",
            fontsize="small",
            frameon=False,
        )
    return save(fig, path)


def plot_complexity(
    history: list[dict],
    path,
    target_bits: float | None = None,
    title: str = "Complexity during search",
) -> Path:
    """Expected and discrete equivalent bits against epoch (fig. 7b), mu on a second axis."""
    check_history(history)
    epochs = [h["epoch"] for h in history]
    marker = "o" if len(epochs) < 12 else None
    fig = Figure(figsize=(6.5, 4), layout="constrained")
    ax = fig.subplots()
    handles = [
        ax.plot(
            *present(epochs, history, "expected_bits"),
            color=W_COLOR,
            marker=marker,
            label="expected bits",
        )[0],
        ax.plot(
            *present(epochs, history, "discrete_bits"),
            color=W_COLOR,
            ls="--",
            marker=marker,
            label="discrete (argmax) bits",
        )[0],
    ]
    if target_bits is not None:
        handles.append(ax.axhline(target_bits, color="tab:red", ls=":", label="target"))
    ax.set_xlabel("epochs trained")
    ax.set_ylabel("equivalent bits")
    epoch_axis(ax, epochs)
    ax.grid(alpha=0.3)
    mu_epochs, mu = present(epochs, history, "mu")
    if mu:
        mu_ax = ax.twinx()
        handles.append(
            mu_ax.plot(
                mu_epochs, mu, color=MU_COLOR, marker=marker, lw=1, label="mu (complexity weight)"
            )[0]
        )
        mu_ax.set_ylabel("mu", color=MU_COLOR)
        mu_ax.tick_params(axis="y", colors=MU_COLOR)
        mu_ax.set_ylim(bottom=0)
    # outside the axes: "best" placement cannot see the curve on the twin axis
    fig.legend(
        handles=handles,
        fontsize="small",
        loc="outside lower center",
        ncols=len(handles),
        frameon=False,
    )
    ax.set_title(title, fontsize="medium")
    return save(fig, path)


def read_search_run(run_dir, arch: arch_file.Arch | None = None):
    """What the figures of a search run dir draw: its found.json (or `arch`) and history.json,
    validated (the history against the architecture; none without a history.json)."""
    run_dir = Path(run_dir)
    arch = arch or arch_file.load(run_dir / "found.json")
    history_path = run_dir / "history.json"
    history = history_file.load(history_path, arch) if history_path.exists() else []
    return arch, history


def write_search_figures(run_dir, arch: arch_file.Arch | None = None, history=None) -> list[Path]:
    """Write bit_allocation.png, sensitivity.png, selector_evolution.png and complexity.png into
    a search run dir, of its found.json (or of `arch`: search.py draws them before it writes
    found.json, which marks the run finished) and history.json (or `history`, as
    read_search_run returns them).

    Without a history (no history.json, or no epoch validated) only the bit allocation can be
    drawn; search.py calls this after every search, so that case warns instead of failing.
    """
    run_dir = Path(run_dir)
    if history is None:
        arch, history = read_search_run(run_dir, arch)
    paths = [plot_bit_allocation(arch, run_dir / "bit_allocation.png")]
    if all(la.probs_w and la.probs_a for la in arch.layers):
        paths.append(plot_sensitivity(arch, run_dir / "sensitivity.png"))
    if not history:
        log.warning(
            "%s: no epoch in history.json, only the bit allocation and sensitivity are drawn",
            run_dir,
        )
        return paths
    paths.append(plot_selector_evolution(history, arch, run_dir / "selector_evolution.png"))
    paths.append(
        plot_complexity(
            history,
            run_dir / "complexity.png",
            target_bits=arch.extra.get("target_bits"),
            title=f"Complexity during search: {run_name(arch)}\n"
            f"found arch: {arch.equivalent_bits:.3f} equivalent bits",
        )
    )
    return paths
