"""Derive discrete bit-widths from the selector probabilities (EdMIPS section 4.7).

argmax       winner-take-all: the most probable candidate (default, eq. 18)
categorical  one draw from each selector's categorical distribution (eq. 19, one trial)
multinomial  `trials` draws; the most frequent candidate wins (ties go to the more probable)
budget       the most probable architecture within the budgets (edmips/search/budgets.py)
"""

import torch
from torch import Tensor

from edmips.search.budgets import Budgets

MODES = ("argmax", "categorical", "multinomial")


def choose(
    probs: Tensor, mode: str = "argmax", trials: int = 100, generator: torch.Generator | None = None
) -> int:
    """Index of the chosen candidate for one selector."""
    probs = probs.detach().double().cpu()
    if mode == "argmax":
        return int(probs.argmax())
    if mode == "categorical":
        return int(torch.multinomial(probs, 1, generator=generator))
    if mode == "multinomial":
        draws = torch.multinomial(probs, trials, replacement=True, generator=generator)
        counts = torch.bincount(draws, minlength=len(probs)).double()
        return int((counts + probs / 2).argmax())  # probs < 1 break ties, never outvote a draw
    raise ValueError(f"unknown discretization {mode!r}: choose from {', '.join(MODES)}")


def discretize(
    probs: list[Tensor],
    candidates: list[tuple[int, ...]],
    mode: str = "argmax",
    trials: int = 100,
    seed: int = 0,
) -> list[int]:
    """One bit-width per selector; seeded, so a run is reproducible."""
    generator = torch.Generator().manual_seed(seed)
    return [c[choose(p, mode, trials, generator)] for p, c in zip(probs, candidates, strict=True)]


def choose_bits(
    probs_w: list[Tensor],
    probs_a: list[Tensor],
    wspaces: list[tuple[int, ...]],
    aspaces: list[tuple[int, ...]],
    mode: str = "argmax",
    trials: int = 100,
    seed: int = 0,
    budgets: Budgets | None = None,
) -> tuple[list[int], list[int]]:
    """(wbits, abits) per searched layer: mode "budget" lands within the budgets, the others
    discretize each selector by itself."""
    if mode == "budget":
        if budgets is None:
            raise ValueError("the budget discretization needs a target")
        return budgets.closest(probs_w, probs_a)
    return (
        discretize(probs_w, wspaces, mode, trials, seed),
        discretize(probs_a, aspaces, mode, trials, seed + 1),
    )
