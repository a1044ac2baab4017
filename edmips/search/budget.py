"""Budget control: land the search on a requested equivalent bit-width without tuning mu.

The complexity weight mu is the Lagrange multiplier of the constraint "equivalent bits <=
target". Dual ascent raises it while the expected equivalent bit-width is above the target and
lowers it while below; the update is multiplicative, so it needs no knowledge of the scale of
the complexity term, and it runs on the device (no host sync per step).
"""

import numpy as np
import torch
from torch import Tensor


class DualAscent:
    def __init__(
        self, target_bits: float, lr: float = 0.05, min_mu: float = 1e-6, max_mu: float = 1e3
    ):
        if target_bits <= 0:
            raise ValueError(f"target_bits must be positive, got {target_bits}")
        self.target_bits, self.lr, self.min_mu, self.max_mu = target_bits, lr, min_mu, max_mu

    def update(self, mu: Tensor, expected_bits: Tensor) -> Tensor:
        violation = expected_bits / self.target_bits - 1.0
        return (mu.clamp_min(self.min_mu) * torch.exp(self.lr * violation)).clamp(
            self.min_mu, self.max_mu
        )


def closest_to_budget(
    probs_w: list[Tensor],
    probs_a: list[Tensor],
    wbits: list[tuple],
    abits: list[tuple],
    flops: list[int],
    target_bits: float,
    tolerance: float = 0.01,
    bins: int = 20_000,
) -> tuple[list[int], list[int]]:
    """The most probable architecture whose equivalent bit-width is within `tolerance`
    (relative) of the target; the nearest one when none is.

    "Most probable" maximises sum_l log p_w + log p_a over the layers' (w, a) choices: with
    sharp selectors it is winner-take-all. The search over all choices is a multiple-choice
    knapsack, solved by dynamic programming over the squared equivalent bits (the BitOps /
    FLOPs ratio) in `bins` steps.
    """
    total = float(sum(flops))
    top = sum(f * max(wb) * max(ab) for f, wb, ab in zip(flops, wbits, abits)) / total
    unit = top / bins  # squared equivalent bits per bin
    best = np.full(bins + 1, -np.inf)
    best[0] = 0.0
    picks = []  # per layer: for each reached bin, the option that reached it
    options = []
    for pw, pa, wb, ab, f in zip(probs_w, probs_a, wbits, abits, flops, strict=True):
        lw, la = (
            np.log(pw.detach().double().cpu().numpy()),
            np.log(pa.detach().double().cpu().numpy()),
        )
        layer = [
            (lw[i] + la[j], round(f * w * a / total / unit), i, j)
            for i, w in enumerate(wb)
            for j, a in enumerate(ab)
        ]
        new, pick = np.full(bins + 1, -np.inf), np.full(bins + 1, -1)
        for k, (score, cost, _, _) in enumerate(layer):
            shifted = np.full(bins + 1, -np.inf)
            shifted[cost:] = best[: bins + 1 - cost] + score
            better = shifted > new
            new[better], pick[better] = shifted[better], k
        best = new
        picks.append(pick)
        options.append(layer)
    bits = np.sqrt(np.arange(bins + 1) * unit)
    reached = np.isfinite(best)
    inside = reached & (np.abs(bits - target_bits) <= tolerance * target_bits)
    if inside.any():
        end = int(np.argmax(np.where(inside, best, -np.inf)))
    else:
        end = int(np.argmin(np.where(reached, np.abs(bits - target_bits), np.inf)))
    chosen = []
    for layer, pick in zip(reversed(options), reversed(picks)):
        _, cost, i, j = layer[pick[end]]
        chosen.append((i, j))
        end -= cost
    chosen.reverse()
    return (
        [wb[i] for wb, (i, _) in zip(wbits, chosen)],
        [ab[j] for ab, (_, j) in zip(abits, chosen)],
    )
