"""Budgets: a search that spends exactly the requested cost, and allocations (most probable, or
random) that land within 1% of one. The cost is any model of edmips.cost (BitOps by default):
each layer l has a table C_l[w, a] over its candidate bit-widths, normalised by the layers'
summed size (FLOPs for BitOps) so that the price's range suits every network.

Budget mode makes "expected cost == target" hold at every step instead of steering a penalty
weight towards it. Before each forward pass the selectors are tilted by one price, s, shared by
every layer:

    p_w(l) ∝ exp(k alpha_w(l) - s C_l p_a(l))      p_a(l) ∝ exp(k alpha_a(l) - s C_l^T p_w(l))

with k the selectors' sharpness; for BitOps C_l p_a = f_l E[a_l] w, with f_l = FLOPs_l / total
FLOPs. For a given s this is the distribution nearest (in KL) to the selectors' own whose
expected cost is lowest at that price: s is the Lagrange multiplier of the budget, solved for
exactly (by bisection) rather than integrated over steps. There are no controller dynamics to
tune: the expected cost sits on the target from the first step, nothing can overshoot, and the
price falls (below zero if need be) as readily as it rises, so an allocation that spent too
little is pulled back up. The selector logits themselves learn from the cross-entropy only:
which layers are worth their bits.

Measured (CIFAR-10 ResNet-20, target 2 bits, H100): a per-batch multiplicative dual ascent on
mu raised it 50x in the first epoch, the expected bits fell to 1.64 and never recovered.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from edmips.cost.layers import LayerCost
from edmips.cost.model import CostModel

PRICE_RANGE = 1e4  # |s| beyond which every layer already sits on its cheapest (dearest) choice
GRID, LEVELS = 33, 3  # bisection by grids evaluated at once: no host sync, few kernels


@dataclass(frozen=True)
class Budget:
    """A target, in the cost's stated unit, for layers with these candidate bit-widths."""

    cost: CostModel
    layers: list[LayerCost]
    wspaces: list[tuple[int, ...]]
    aspaces: list[tuple[int, ...]]
    target: float

    def tables(self) -> list[np.ndarray]:
        return [
            self.cost.table(c, w, a)
            for c, w, a in zip(self.layers, self.wspaces, self.aspaces, strict=True)
        ]

    def span(self, tables: list[np.ndarray] | None = None) -> tuple[float, float]:
        """The stated cost of the cheapest and of the dearest allocation (`tables`: the
        budget's, when they are already at hand)."""
        tables = self.tables() if tables is None else tables
        size = self.cost.total_size(self.layers)
        lo = float(self.cost.stated(sum(t.min() for t in tables) / size))
        hi = float(self.cost.stated(sum(t.max() for t in tables) / size))
        return lo, hi


class BudgetPrice(nn.Module):
    """Solves for the price that puts the expected cost on the target."""

    def __init__(self, budget: Budget):
        super().__init__()
        if budget.target <= 0:
            raise ValueError(f"the target must be positive, got {budget.target}")
        self.budget = budget
        cost = budget.cost
        size = torch.tensor([float(cost.size(c)) for c in budget.layers], dtype=torch.float64)
        self.register_buffer("share", (size / size.sum()).float(), persistent=False)
        self.register_buffer("wbits", _padded(budget.wspaces), persistent=False)
        self.register_buffer("abits", _padded(budget.aspaces), persistent=False)
        factors = [cost.factors(w, a) for w, a in zip(budget.wspaces, budget.aspaces)]
        self.product = all(f is not None for f in factors)
        if self.product:  # C_l = share_l * u v^T
            self.register_buffer("u", _padded([u for u, _ in factors]), persistent=False)
            self.register_buffer("v", _padded([v for _, v in factors]), persistent=False)
        else:
            self.register_buffer("table", padded_tables([budget])[0], persistent=False)

    def recorded(self) -> dict:
        """What found.json records of the price beside `mu`: nothing more (JointPrice: each)."""
        return {}

    def cost_only(self) -> tuple[Tensor, Tensor]:
        """Expected (w, a) per layer when the selectors have learned nothing: the allocation
        that the budget makes from the layers' costs alone, to compare a search with."""
        logits_w = torch.where(self.wbits > 0, 0.0, float("-inf"))
        logits_a = torch.where(self.abits > 0, 0.0, float("-inf"))
        _, tilt_w, tilt_a = self.tilts(logits_w, logits_a)
        expected_w = (torch.softmax(logits_w - tilt_w, -1) * self.wbits).sum(-1)
        expected_a = (torch.softmax(logits_a - tilt_a, -1) * self.abits).sum(-1)
        return expected_w, expected_a

    def tilts(self, logits_w: Tensor, logits_a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(price, tilt_w, tilt_a) for the padded logits [layers, candidates] (padding -inf)."""
        lo = logits_w.new_full((), -math.asinh(PRICE_RANGE))
        target = self.budget.cost.per_size(self.budget.target)
        expected = self._expected_product if self.product else self._expected_table
        spent_at = lambda u: expected(torch.sinh(u), logits_w, logits_a)[0]  # noqa: E731
        lo, hi, _ = bisect(spent_at, target, lo, -lo)
        price = torch.sinh((lo + hi) / 2)
        _, tilt_w, tilt_a = expected(price.view(1), logits_w, logits_a)
        return price, tilt_w[0], tilt_a[0]

    def _expected_product(self, price: Tensor, logits_w: Tensor, logits_a: Tensor, rounds=3):
        """Expected cost per unit of size at each price [G], and the tilts [G, layers, k].

        The weight tilt depends on the activations' expected factor and the other way round: a
        few fixed-point rounds settle them (they change little once the selectors are sharp).
        """
        s = price.view(-1, 1, 1) * self.share.view(1, -1, 1)
        expected_v = (torch.softmax(logits_a, -1) * self.v).sum(-1)
        for _ in range(rounds):
            tilt_w = s * expected_v.unsqueeze(-1) * self.u
            expected_u = (torch.softmax(logits_w - tilt_w, -1) * self.u).sum(-1)
            tilt_a = s * expected_u.unsqueeze(-1) * self.v
            expected_v = (torch.softmax(logits_a - tilt_a, -1) * self.v).sum(-1)
        return (self.share * expected_u * expected_v).sum(-1), tilt_w, tilt_a

    def _expected_table(self, price: Tensor, logits_w: Tensor, logits_a: Tensor, rounds=3):
        """As _expected_product, for any table: tilts s C p_a and s C^T p_w (expected_costs with
        one budget, its products in another order: equal but for float32 rounding, which a
        search's selectors carry from step to step)."""
        s = price.view(-1, 1, 1)
        p_a = torch.softmax(logits_a, -1).expand(len(s), *logits_a.shape)
        for _ in range(rounds):
            tilt_w = s * (self.table @ p_a.unsqueeze(-1)).squeeze(-1)
            p_w = torch.softmax(logits_w - tilt_w, -1)
            tilt_a = s * (p_w.unsqueeze(-2) @ self.table).squeeze(-2)
            p_a = torch.softmax(logits_a - tilt_a, -1)
        spent = (p_w.unsqueeze(-2) @ self.table @ p_a.unsqueeze(-1)).flatten(1).sum(-1)
        return spent, tilt_w, tilt_a


def padded_tables(budgets: list[Budget]) -> Tensor:
    """The budgets' tables [budgets, layers, w, a], each per unit of its cost's size (the stated
    unit's, not always the size's), zero where a layer has fewer candidates."""
    first = budgets[0]
    width_w, width_a = max(len(s) for s in first.wspaces), max(len(s) for s in first.aspaces)
    tables = torch.zeros(len(budgets), len(first.layers), width_w, width_a)
    for padded, b in zip(tables, budgets):
        total = float(b.cost.total_size(b.layers))
        for t, c in zip(padded, b.tables()):
            t[: c.shape[0], : c.shape[1]] = torch.tensor(c / total)
    return tables


def expected_costs(prices: Tensor, tables: Tensor, logits_w: Tensor, logits_a: Tensor, rounds=3):
    """The expected costs [G, K] at each row of prices [G, K] over `tables` [K, layers, w, a]
    (padded_tables), and the tilts sum_k s_k C_k p_a and p_w^T sum_k s_k C_k [G, layers, k]:
    the weight tilt depends on the activations' distribution and the other way round, and a
    few fixed-point rounds settle them."""
    table = torch.einsum("gk,klwa->glwa", prices, tables)
    p_a = torch.softmax(logits_a, -1).expand(len(prices), *logits_a.shape)
    for _ in range(rounds):
        tilt_w = (table @ p_a.unsqueeze(-1)).squeeze(-1)
        p_w = torch.softmax(logits_w - tilt_w, -1)
        tilt_a = (p_w.unsqueeze(-2) @ table).squeeze(-2)
        p_a = torch.softmax(logits_a - tilt_a, -1)
    spent = torch.einsum("glw,klwa,gla->gk", p_w, tables, p_a)
    return spent, tilt_w, tilt_a


def bisect(spent_at, target: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The bracket [lo, hi] of u, narrowed LEVELS times on GRID points, where the cost
    `spent_at(u)` [GRID], which falls as u rises, crosses `target`; and whether the cost was
    at or under the target at every point of the first grid (met at its lowest u). Tensor
    indices throughout: no host sync."""
    grid = torch.linspace(0, 1, GRID, device=lo.device)
    for level in range(LEVELS):
        u = lo + (hi - lo) * grid
        over = (spent_at(u) > target).sum()  # the target lies between grid points i-1 and i
        if level == 0:
            met_at_lowest = over == 0
        i = over.clamp(1, GRID - 1)
        lo, hi = u.index_select(0, torch.stack([i - 1, i]))
    return lo, hi, met_at_lowest


@torch.no_grad()
def tilt_selectors(layers: list[nn.Module], price: nn.Module) -> Tensor:
    """Tilt the composite layers' selectors by the price that puts their expected cost on the
    budget (`price`: a BudgetPrice, or a JointPrice for several); the price (the primary's)."""
    pad = float("-inf")
    logits_w = pad_sequence([m.logits_w() for m in layers], True, pad)
    logits_a = pad_sequence([m.logits_a() for m in layers], True, pad)
    value, tilt_w, tilt_a = price.tilts(logits_w, logits_a)
    for m, tw, ta in zip(layers, tilt_w, tilt_a):
        m.tilt_w.copy_(tw[: len(m.tilt_w)])
        m.tilt_a.copy_(ta[: len(m.tilt_a)])
    return value


def check_reachable(budget: Budget, tables: list[np.ndarray] | None = None) -> None:
    """A target the space can meet: between the cheapest and the dearest allocation (`tables`:
    the budget's, when they are already at hand)."""
    lo, hi = budget.span(tables)
    if not lo <= budget.target <= hi:
        raise ValueError(
            f"target of {budget.target:.3f} {budget.cost.unit} is out of reach: the space "
            f"spans {lo:.3f} to {hi:.3f}"
        )


def _padded(spaces: list) -> Tensor:
    width = max(len(s) for s in spaces)
    return torch.tensor([list(s) + [0] * (width - len(s)) for s in spaces], dtype=torch.float32)


def closest_to_budget(
    probs_w: list[Tensor],
    probs_a: list[Tensor],
    budget: Budget,
    tolerance: float = 0.01,
    bins: int = 20_000,
) -> tuple[list[int], list[int]]:
    """The most probable architecture whose stated cost is within `tolerance` (relative) of
    the target; the nearest one when none is.

    "Most probable" maximises sum_l log p_w + log p_a over the layers' (w, a) choices: with
    sharp selectors it is winner-take-all. The search over all choices is a multiple-choice
    knapsack, solved by dynamic programming over the cost per unit of size (for BitOps the
    squared equivalent bits) in `bins` steps.
    """
    return _best_within_budget(log_scores(probs_w, probs_a), budget, tolerance, bins)


def random_allocation(
    budget: Budget, seed: int, tolerance: float = 0.01
) -> tuple[list[int], list[int]]:
    """A random (w, a) per layer within `tolerance` of the target: the baseline a search must
    beat. Each choice gets an independent random score and the best-scoring allocation within
    the budget wins, so every allocation within it is reachable, and the seed fixes the draw."""
    rng = np.random.default_rng(seed)
    scores = [
        rng.gumbel(size=(len(wb), len(ab)))
        for wb, ab in zip(budget.wspaces, budget.aspaces, strict=True)
    ]
    return _best_within_budget(scores, budget, tolerance, 20_000)


def knapsack(options: list[list[tuple[float, int]]], bins: int):
    """The multiple-choice knapsack's forward pass: one option per layer, each (value, cost in
    bins). Returns the best summed value that reaches each bin [bins + 1] (-inf: unreached)
    and, per layer, the option that reached each bin; options over `bins` are never taken."""
    best = np.full(bins + 1, -np.inf)
    best[0] = 0.0
    picks = []
    for layer in options:
        new, pick = np.full(bins + 1, -np.inf), np.full(bins + 1, -1)
        for k, (value, cost) in enumerate(layer):
            if cost > bins:
                continue
            shifted = np.full(bins + 1, -np.inf)
            shifted[cost:] = best[: bins + 1 - cost] + value
            better = shifted > new
            new[better], pick[better] = shifted[better], k
        best = new
        picks.append(pick)
    return best, picks


def backtrack(options: list[np.ndarray], picks, ends: np.ndarray) -> list[np.ndarray]:
    """Per layer, the rows of its `options` [k, ...] (the last column: the cost in bins) that
    the knapsack's `picks` took to end in each of the bins `ends` [N]: [N, ...] each."""
    chosen = []
    for opts, pick in zip(reversed(options), reversed(picks)):
        taken = opts[pick[ends]]
        chosen.append(taken)
        ends = ends - taken[:, -1]
    return chosen[::-1]


def log_scores(probs_w: list[Tensor], probs_a: list[Tensor]) -> list[np.ndarray]:
    """log p_w + log p_a per layer's (w, a): the score of the most probable architecture."""
    return [
        np.log(pw.detach().double().cpu().numpy())[:, None]
        + np.log(pa.detach().double().cpu().numpy())[None, :]
        for pw, pa in zip(probs_w, probs_a, strict=True)
    ]


def _best_within_budget(scores, budget: Budget, tolerance, bins):
    """Maximise the summed scores[l][i, j] of the chosen (wspaces[l][i], aspaces[l][j]) subject
    to the stated cost being within `tolerance` of the target (the nearest reachable if none)."""
    tables = [t.tolist() for t in budget.tables()]  # exact numbers, in Python's arithmetic
    total = float(budget.cost.total_size(budget.layers))
    top = sum(max(max(row) for row in t) for t in tables) / total
    unit = top / bins  # cost per unit of size, per bin
    options = [
        np.array(
            [(i, j, round(c / total / unit)) for i, row in enumerate(t) for j, c in enumerate(row)]
        )
        for t in tables
    ]
    values = [
        [(score[i, j], cost) for i, j, cost in opts]
        for score, opts in zip(scores, options, strict=True)
    ]
    best, picks = knapsack(values, bins)
    levels = np.arange(bins + 1) * unit
    stated = budget.cost.stated(levels)
    target = budget.target
    reached = np.isfinite(best)
    # Each layer's cost is rounded to its nearest bin: a bin inside the tolerance by this
    # much on both sides holds only allocations whose exact cost is inside it too.
    slack = 0.5 * unit * len(tables)
    low = budget.cost.stated(np.maximum(levels - slack, 0))
    high = budget.cost.stated(levels + slack)
    inside = reached & (low >= (1 - tolerance) * target) & (high <= (1 + tolerance) * target)
    if inside.any():
        end = int(np.argmax(np.where(inside, best, -np.inf)))
    else:
        end = int(np.argmin(np.where(reached, np.abs(stated - target), np.inf)))
    chosen = [taken[0] for taken in backtrack(options, picks, np.array([end]))]
    return (
        [wb[i] for wb, (i, _, _) in zip(budget.wspaces, chosen)],
        [ab[j] for ab, (_, j, _) in zip(budget.aspaces, chosen)],
    )


def best_scoring(scores, budget: Budget, tolerance: float = 0.01) -> tuple[list[int], list[int]]:
    """The (w, a) per layer maximising the summed scores[l][i, j] (of wspaces[l][i],
    aspaces[l][j]) within `tolerance` of the target: an allocation from measured scores."""
    return _best_within_budget(scores, budget, tolerance, 20_000)
