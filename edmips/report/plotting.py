"""What the figures share: names and titles, axes, the candidates behind probabilities, saving.

Figures are made with `Figure` rather than pyplot: that needs no screen and leaves the backend
of whoever imports these modules alone.
"""

import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from edmips.records import arch as arch_file
from edmips.records.files import make_dir


def run_name(arch: arch_file.Arch) -> str:
    return f"{arch.model} on {arch.data}" if arch.data else arch.model


def allocation_title(arch: arch_file.Arch) -> str:
    return (
        f"{run_name(arch)}: {arch.equivalent_bits:.3f} equivalent bits, "
        f"{arch.weight_bits_total / 8 / 2**20:.3g} MiB of weights"
    )


def check_history(history: list[dict]) -> None:
    if not history:
        raise ValueError("history is empty: the search recorded no epoch")


def epoch_axis(ax, epochs: list, nbins: int | str = "auto") -> None:
    ax.xaxis.set_major_locator(MaxNLocator(nbins, integer=True))
    if min(epochs) == max(epochs):  # one epoch: a unit-wide axis, not matplotlib's ±0.05
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        ax.set_xticks([epochs[0]])


def present(epochs: list, history: list[dict], key: str) -> tuple[list, list]:
    """(epochs, values) where the value was recorded and is a number."""
    pairs = [
        (e, h[key])
        for e, h in zip(epochs, history, strict=True)
        if isinstance(h.get(key), (int, float)) and math.isfinite(h[key])
    ]
    return [e for e, _ in pairs], [v for _, v in pairs]


def candidates(space: list[int], n: int, chosen: int) -> list[int]:
    """Bit-widths behind a layer's n probabilities (a layer fed the image has one: its own)."""
    if len(space) == n:
        return list(space)
    return [chosen] if n == 1 else list(range(n))


def bit_colors(space: list[int]) -> dict[int, tuple]:
    cmap = colormaps["viridis"]
    bits = sorted(space)
    # stop at 0.85: the yellow end of viridis is unreadable on white
    return {b: cmap(0.85 * k / max(1, len(bits) - 1)) for k, b in enumerate(bits)}


def short(name: str, limit: int = 24) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def save(fig: Figure, path) -> Path:
    path = Path(path)
    make_dir(path.parent)
    fig.savefig(path, dpi=120)
    return path
