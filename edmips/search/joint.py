"""Several budgets at once: each an upper bound (cost_k <= target_k), one price per constraint.

A single budget is an equality, held by one price in edmips/search/budget.py (untouched here:
its seeded runs stay as they were). With several, the natural reading is "spend at most this
much of each": the selectors are tilted by sum_k s_k C_k (each table per unit of its cost's
size), with prices s_k >= 0 such that every expected cost is at most its target and a price is
positive only where its constraint binds (complementary slackness: the KKT conditions of the
distribution nearest the selectors' own within every budget). The prices are found by
coordinate-wise bisection: each in turn on the grids of budget.py with the others fixed (0 when
its constraint holds at price 0), a fixed number of rounds per step, started from the previous
step's prices, so that no host sync is needed and the rounds of one step continue the last's.

The discrete architecture comes from the same dynamic program over one "primary" cost, with the
others priced into the scores (Lagrangian relaxation) on a grid of prices, each cost as the
primary in turn: every allocation the programs end on is costed exactly, and the most probable
one wins that meets every budget within the tolerance with the tightest within it of its target.
"""

import itertools
import math
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn

from edmips.search.budget import (
    PRICE_RANGE,
    Budget,
    backtrack,
    bisect,
    expected_costs,
    knapsack,
    log_scores,
    padded_tables,
)

ROUNDS = 4  # coordinate rounds per step: warm-started, they track selectors that move slowly
PRICES = 32  # Lagrangian prices tried per priced-in constraint (and primary), fewer with more
BINS = 5_000  # the dynamic program's steps up to the primary's target (costs are exact after)


class JointPrice(nn.Module):
    """Solves for the prices that hold every expected cost at or under its target."""

    def __init__(self, budgets: list[Budget], labels: list[str]):
        super().__init__()
        self.budgets, self.labels = budgets, labels
        self.register_buffer("tables", padded_tables(budgets), persistent=False)
        per_size = [b.cost.per_size(b.target) for b in budgets]
        self.register_buffer("targets", torch.tensor(per_size), persistent=False)
        # In the checkpoint: each step's bisection starts from the last prices, so a resumed
        # search continues from them as an uninterrupted one does.
        self.register_buffer("prices", torch.zeros(len(budgets)))

    def recorded(self) -> dict:
        """What found.json records of the prices: each budget's at the end."""
        return {"final_prices": dict(zip(self.labels, self.prices.tolist()))}

    def tilts(self, logits_w: Tensor, logits_a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(the first price, tilt_w, tilt_a) for the padded logits, as BudgetPrice.tilts; all
        the prices are in `prices`."""
        top = math.asinh(PRICE_RANGE)
        prices = self.prices.clone()

        def spent_at(u, k):  # the k-th cost at each of its prices sinh(u), the others fixed
            trial = prices.expand(len(u), -1).clone()
            trial[:, k] = torch.sinh(u)
            return self._expected(trial, logits_w, logits_a)[0][:, k]

        for _ in range(ROUNDS):
            for k in range(len(prices)):
                lo, hi = logits_w.new_zeros(()), logits_w.new_full((), top)
                lo, hi, free = bisect(partial(spent_at, k=k), self.targets[k], lo, hi)
                # met at price 0 (free): the constraint does not bind
                prices[k] = torch.where(free, 0.0, torch.sinh((lo + hi) / 2))
        self.prices.copy_(prices)
        _, tilt_w, tilt_a = self._expected(prices.view(1, -1), logits_w, logits_a)
        return prices[0], tilt_w[0], tilt_a[0]

    def expected(self, logits_w: Tensor, logits_a: Tensor) -> Tensor:
        """Each cost expected at the current prices, per unit of its size."""
        return self._expected(self.prices.view(1, -1), logits_w, logits_a)[0][0]

    def _expected(self, prices: Tensor, logits_w: Tensor, logits_a: Tensor):
        """Expected costs [G, K] at each row of prices [G, K], and the tilts [G, layers, k]."""
        return expected_costs(prices, self.tables, logits_w, logits_a)


def stated_costs(budgets: list[Budget], wbits, abits) -> list[float]:
    """Each budget's cost of an allocation, in its stated unit."""
    return [b.cost.stated_total(b.cost.total(b.layers, wbits, abits), b.layers) for b in budgets]


def achieved(budgets: list[Budget], labels: list[str], wbits, abits) -> list[dict]:
    """Per budget: its key=value, cost, target and the allocation's cost, in the stated unit."""
    return [
        {"budget": label, "cost": b.cost.name, "unit": b.cost.unit, "target": b.target,
         "achieved": spent}
        for label, b, spent in zip(labels, budgets, stated_costs(budgets, wbits, abits))
    ]  # fmt: skip


def check_jointly_reachable(budgets: list[Budget], labels: list[str], tolerance=0.01) -> None:
    """Refuses, naming the constraint, budgets the space cannot meet: one whose cheapest
    allocation alone is over it, or one over it even at its cheapest within all the others."""
    for b, label in zip(budgets, labels):
        lo, _ = b.span()
        if lo > b.target:
            raise ValueError(
                f"{label} cannot be met: its cheapest allocation spends {lo:.4g} "
                f"{b.cost.unit}, over the target of {b.target:.4g}"
            )
    for k, (b, label) in enumerate(zip(budgets, labels)):
        others = [x for i, x in enumerate(budgets) if i != k]
        scores = [-t / float(b.cost.total_size(b.layers)) for t in b.tables()]
        found = _candidates(scores, others, 1 + tolerance)
        if found is None:
            continue  # the others cannot be met at all: their own turn names one
        within = found[0].max(1) <= 1 + tolerance
        if not within.any():
            continue
        least = _totals(b, found)[within].min()
        if least > (1 + tolerance) * b.cost.per_size(b.target):
            least = float(b.cost.stated(least))
            rest = " and ".join(x for i, x in enumerate(labels) if i != k)
            raise ValueError(
                f"{label} cannot be met together with {rest}: the cheapest allocation within "
                f"{'them' if len(others) > 1 else 'it'} spends {least:.4g} {b.cost.unit}, over "
                f"the target of {b.target:.4g}"
            )


def _totals(budget: Budget, found) -> np.ndarray:
    """Per candidate, the budget's cost per unit of its size."""
    _, choice, _ = found
    total = float(budget.cost.total_size(budget.layers))
    return sum(np.asarray(t)[i, j] for t, (i, j) in zip(budget.tables(), choice)) / total


def joint_best(scores, budgets: list[Budget], tolerance=0.01) -> tuple[list[int], list[int]]:
    """The best-scoring (w, a) per layer within every budget (each <= (1 + tolerance) target),
    the tightest within `tolerance` of its target; else the feasible one closest to its
    target, else the one least over any."""
    found = _candidates(scores, budgets, 1 + tolerance)
    if found is None:  # nothing within the primary's cap: the cheapest overall
        found = _candidates(scores, budgets, math.inf)
    ratios, choice, value = found
    over = ratios.max(1)
    feasible = over <= 1 + tolerance
    tight = feasible & (over >= 1 - tolerance)
    if tight.any():
        end = int(np.argmax(np.where(tight, value, -np.inf)))
    elif feasible.any():
        end = int(np.argmax(np.where(feasible, over, -np.inf)))
    else:
        end = int(np.argmin(over))
    first = budgets[0]
    return (
        [wb[int(i[end])] for wb, (i, _) in zip(first.wspaces, choice)],
        [ab[int(j[end])] for ab, (_, j) in zip(first.aspaces, choice)],
    )


def joint_closest(probs_w, probs_a, budgets, tolerance=0.01):
    """closest_to_budget for several budgets: the most probable architecture within them."""
    return joint_best(log_scores(probs_w, probs_a), budgets, tolerance)


def joint_random(budgets: list[Budget], seed: int, tolerance=0.01):
    """random_allocation for several budgets: Gumbel scores, the best within all of them."""
    rng = np.random.default_rng(seed)
    first = budgets[0]
    scores = [rng.gumbel(size=(len(w), len(a))) for w, a in zip(first.wspaces, first.aspaces)]
    return joint_best(scores, budgets, tolerance)


def _candidates(scores, budgets: list[Budget], slack: float):
    """Allocations from the dynamic program over each budget's cost in turn (up to `slack`
    times its target), the others priced in on a grid: (cost / target [N, K], (i, j) per layer,
    each an index array [N], the summed scores [N]); None when no allocation is within a cap.
    Costs are compared as totals (BitOps, bits, ms: what a user budgets), not in the stated
    unit, whose square root (equivalent bits) would admit 2% more BitOps."""
    tables = [[np.asarray(t, dtype=float) / float(b.cost.total_size(b.layers))
               for t in b.tables()] for b in budgets]  # fmt: skip
    scores = [np.asarray(s, dtype=float) for s in scores]
    k = len(budgets)
    steps = max(3, round(PRICES ** (1 / max(k - 1, 1))))
    grid = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, steps - 1)])
    found = []
    for primary in range(k):
        others = [i for i in range(k) if i != primary]
        for lams in itertools.product(grid, repeat=len(others)):
            priced = [
                s - sum(lam * tables[o][layer] for lam, o in zip(lams, others))
                for layer, s in enumerate(scores)
            ]
            cap = slack * budgets[primary].cost.per_size(budgets[primary].target)
            top = sum(t.max() for t in tables[primary])
            ends = _program(priced, tables[primary], min(cap, top))
            if ends is not None:
                found.append(ends)
    if not found:
        return None
    i = [np.concatenate([f[layer][0] for f in found]) for layer in range(len(scores))]
    j = [np.concatenate([f[layer][1] for f in found]) for layer in range(len(scores))]
    ratios = np.stack(
        [
            sum(t[ii, jj] for t, ii, jj in zip(tab, i, j)) / b.cost.per_size(b.target)
            for b, tab in zip(budgets, tables)
        ],
        1,
    )
    value = sum(s[ii, jj] for s, ii, jj in zip(scores, i, j))
    return ratios, list(zip(i, j)), value


def _program(scores, tables, cap: float):
    """The multiple-choice knapsack of budget.py over one cost up to `cap` (per unit of size):
    for every bin reached, the best allocation ending there, backtracked for all bins at once
    as (i, j) index arrays per layer; None when no bin is reached."""
    unit = cap / BINS
    options = [
        np.array([(i, j, round(table[i, j] / unit)) for i, j in np.ndindex(*table.shape)])
        for table in tables
    ]
    values = [[(score[i, j], cost) for i, j, cost in opts] for score, opts in zip(scores, options)]
    best, picks = knapsack(values, BINS)
    ends = np.flatnonzero(np.isfinite(best))
    if not len(ends):
        return None
    return [(taken[:, 0], taken[:, 1]) for taken in backtrack(options, picks, ends)]
