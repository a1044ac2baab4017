"""Budgets: a search that spends exactly the requested equivalent bit-width, and allocations
(most probable, or random) that land within 1% of one.

Budget mode makes "expected equivalent bits == target" hold at every step instead of steering a
penalty weight towards it. Before each forward pass the selectors are tilted by one price per
bit, s, shared by every layer:

    p_w(l) ∝ exp(k alpha_w(l) - s f_l E[a_l] w)      p_a(l) ∝ exp(k alpha_a(l) - s f_l E[w_l] a)

with f_l = FLOPs_l / total FLOPs and k the selectors' sharpness. For a given s this is the
distribution nearest (in KL) to the selectors' own whose expected cost is lowest at that price:
s is the Lagrange multiplier of the budget, solved for exactly (by bisection) rather than
integrated over steps. There are no controller dynamics to tune: the expected bits sit on the
target from the first step, nothing can overshoot, and the price falls (below zero if need be)
as readily as it rises, so an allocation that spent too little is pulled back up. The selector
logits themselves learn from the cross-entropy only: which layers are worth their bits.

Measured (CIFAR-10 ResNet-20, target 2 bits, H100): the previous per-batch multiplicative dual
ascent raised mu 50x in the first epoch, the expected bits fell to 1.64 and never recovered.
"""

import math

import numpy as np
import torch
from torch import Tensor, nn

PRICE_RANGE = 1e4  # |s| beyond which every layer already sits on its cheapest (dearest) choice
GRID, LEVELS = 33, 3  # bisection by grids evaluated at once: no host sync, few kernels


class BitPrice(nn.Module):
    """Solves for the price that puts the expected equivalent bits on the target."""

    def __init__(self, target_bits: float, flops: list[int], wspaces: list, aspaces: list):
        super().__init__()
        if target_bits <= 0:
            raise ValueError(f"target_bits must be positive, got {target_bits}")
        self.target_bits = target_bits
        flops = torch.tensor([float(f) for f in flops], dtype=torch.float64)
        self.register_buffer("share", (flops / flops.sum()).float(), persistent=False)
        self.register_buffer("wbits", _padded(wspaces), persistent=False)
        self.register_buffer("abits", _padded(aspaces), persistent=False)

    def flops_only(self) -> tuple[Tensor, Tensor]:
        """Expected (w, a) per layer when the selectors have learned nothing: the allocation
        that the budget makes from the layers' FLOPs alone, to compare a search with."""
        logits_w = torch.where(self.wbits > 0, 0.0, float("-inf"))
        logits_a = torch.where(self.abits > 0, 0.0, float("-inf"))
        _, tilt_w, tilt_a = self.tilts(logits_w, logits_a)
        expected_w = (torch.softmax(logits_w - tilt_w, -1) * self.wbits).sum(-1)
        expected_a = (torch.softmax(logits_a - tilt_a, -1) * self.abits).sum(-1)
        return expected_w, expected_a

    def tilts(self, logits_w: Tensor, logits_a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(price, tilt_w, tilt_a) for the padded logits [layers, candidates] (padding -inf)."""
        lo = logits_w.new_full((), -math.asinh(PRICE_RANGE))
        hi = -lo
        grid = torch.linspace(0, 1, GRID, device=logits_w.device)
        target = self.target_bits**2
        for _ in range(LEVELS):
            u = lo + (hi - lo) * grid
            squared, _, _ = self._expected(torch.sinh(u), logits_w, logits_a)
            # squared falls as the price rises: the target lies between grid points i-1 and i
            i = (squared > target).sum().clamp(1, GRID - 1)
            lo, hi = u.index_select(0, torch.stack([i - 1, i]))  # a tensor index: no host sync
        price = torch.sinh((lo + hi) / 2)
        _, tilt_w, tilt_a = self._expected(price.view(1), logits_w, logits_a)
        return price, tilt_w[0], tilt_a[0]

    def _expected(self, price: Tensor, logits_w: Tensor, logits_a: Tensor, iterations: int = 3):
        """Expected squared equivalent bits at each price [G], and the tilts [G, layers, k].

        The weight tilt depends on the activations' expected bits and the other way round: a
        few fixed-point rounds settle them (they change little once the selectors are sharp).
        """
        s = price.view(-1, 1, 1) * self.share.view(1, -1, 1)
        expected_a = (torch.softmax(logits_a, -1) * self.abits).sum(-1)
        for _ in range(iterations):
            tilt_w = s * expected_a.unsqueeze(-1) * self.wbits
            expected_w = (torch.softmax(logits_w - tilt_w, -1) * self.wbits).sum(-1)
            tilt_a = s * expected_w.unsqueeze(-1) * self.abits
            expected_a = (torch.softmax(logits_a - tilt_a, -1) * self.abits).sum(-1)
        return (self.share * expected_w * expected_a).sum(-1), tilt_w, tilt_a


def check_reachable(target_bits: float, wbits, abits) -> None:
    """A budget the space can meet: between its lowest and highest equivalent bit-width."""
    lo, hi = math.sqrt(min(wbits) * min(abits)), math.sqrt(max(wbits) * max(abits))
    if not lo <= target_bits <= hi:
        raise ValueError(
            f"target of {target_bits:.3f} equivalent bits is out of reach: the space "
            f"spans {lo:.3f} to {hi:.3f}"
        )


def _padded(spaces: list[tuple[int, ...]]) -> Tensor:
    width = max(len(s) for s in spaces)
    return torch.tensor([list(s) + [0] * (width - len(s)) for s in spaces], dtype=torch.float32)


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
    scores = [
        np.log(pw.detach().double().cpu().numpy())[:, None]
        + np.log(pa.detach().double().cpu().numpy())[None, :]
        for pw, pa in zip(probs_w, probs_a, strict=True)
    ]
    return _best_within_budget(scores, wbits, abits, flops, target_bits, tolerance, bins)


def random_allocation(
    wbits: list[tuple],
    abits: list[tuple],
    flops: list[int],
    target_bits: float,
    seed: int,
    tolerance: float = 0.01,
) -> tuple[list[int], list[int]]:
    """A random (w, a) per layer within `tolerance` of the target: the baseline a search must
    beat. Each choice gets an independent random score and the best-scoring allocation within
    the budget wins, so every allocation within it is reachable, and the seed fixes the draw."""
    rng = np.random.default_rng(seed)
    scores = [rng.gumbel(size=(len(wb), len(ab))) for wb, ab in zip(wbits, abits, strict=True)]
    return _best_within_budget(scores, wbits, abits, flops, target_bits, tolerance, 20_000)


def _best_within_budget(scores, wbits, abits, flops, target_bits, tolerance, bins):
    """Maximise the summed scores[l][i, j] of the chosen (wbits[l][i], abits[l][j]) subject to
    the equivalent bits being within `tolerance` of the target (the nearest reachable if none)."""
    total = float(sum(flops))
    top = sum(f * max(wb) * max(ab) for f, wb, ab in zip(flops, wbits, abits)) / total
    unit = top / bins  # squared equivalent bits per bin
    best = np.full(bins + 1, -np.inf)
    best[0] = 0.0
    picks = []  # per layer: for each reached bin, the option that reached it
    options = []
    for score, wb, ab, f in zip(scores, wbits, abits, flops, strict=True):
        layer = [
            (score[i, j], round(f * w * a / total / unit), i, j)
            for i, w in enumerate(wb)
            for j, a in enumerate(ab)
        ]
        new, pick = np.full(bins + 1, -np.inf), np.full(bins + 1, -1)
        for k, (value, cost, _, _) in enumerate(layer):
            shifted = np.full(bins + 1, -np.inf)
            shifted[cost:] = best[: bins + 1 - cost] + value
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
