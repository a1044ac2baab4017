"""Several budgets: the joint prices hold every expected cost at or under its target (on it
where the price is positive), and the discretized allocation, most probable or random, meets
every budget within 1% with the tightest within 1% of its target."""

import pytest
import torch

from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost
from edmips.search.budget import Budget
from edmips.search.joint import JointPrice, joint_closest, joint_random, stated_costs

SPACE_W, SPACE_A = (1, 2, 3, 4), (2, 3, 4)
FLOPS = [2_359_296] * 6 + [1_179_648, 131_072] + [2_359_296] * 5
PARAMS = [36_864] * 6 + [18_432, 2_048] + [36_864] * 5
LAYERS = [LayerCost(f"l{i}", "conv", f, p, 0, ()) for i, (f, p) in enumerate(zip(FLOPS, PARAMS))]
PAIRS = [(2.0, 2.5), (3.0, 2.0), (2.0, 1.5), (2.8, 2.2)]  # BitOps binds, size, both, either


def _budgets(bits, bits_per_weight):
    n = len(LAYERS)
    return [
        Budget(cost_models.get(name), LAYERS, [SPACE_W] * n, [SPACE_A] * n, target)
        for name, target in (("bitops", bits), ("weight_size", bits_per_weight))
    ]


def _ratios(budgets, w, a):
    """Each cost's total over its target's (BitOps, not equivalent bits)."""
    return [
        b.cost.per_size(c) / b.cost.per_size(b.target)
        for b, c in zip(budgets, stated_costs(budgets, w, a))
    ]


@pytest.mark.parametrize("bits,size", PAIRS)
def test_the_prices_hold_every_cost_at_or_under_its_target_while_the_selectors_drift(bits, size):
    torch.manual_seed(0)
    budgets = _budgets(bits, size)
    price = JointPrice(budgets, ["bitops", "weight_size"])
    logits_w, logits_a = torch.randn(len(LAYERS), 4), torch.randn(len(LAYERS), 3)
    for step in range(60):
        direction = 1.0 if step < 30 else -2.0  # towards more bits, then hard towards fewer
        logits_w += 0.05 * direction * torch.tensor(SPACE_W) + 0.05 * torch.randn(logits_w.shape)
        logits_a += 0.05 * direction * torch.tensor(SPACE_A) + 0.05 * torch.randn(logits_a.shape)
        price.tilts(logits_w, logits_a)
        spent = price.expected(logits_w, logits_a) / price.targets
        prices = price.prices
        assert bool((prices >= 0).all()) and float(spent.max()) <= 1.01
        if step >= 2:  # warm-started rounds have caught up: a positive price binds
            assert bool(((prices == 0) | (spent >= 0.99)).all()), (step, prices, spent)


@pytest.mark.parametrize("bits,size", PAIRS)
def test_the_discretization_meets_every_budget_the_tightest_within_one_percent(bits, size):
    torch.manual_seed(1)
    budgets = _budgets(bits, size)
    pw = [torch.softmax(torch.randn(4), 0) for _ in LAYERS]
    pa = [torch.softmax(torch.randn(3), 0) for _ in LAYERS]
    for w, a in (joint_closest(pw, pa, budgets), joint_random(budgets, 0)):
        ratios = _ratios(budgets, w, a)
        assert max(ratios) <= 1.01 and max(ratios) >= 0.99, ratios


def test_a_random_allocation_under_two_budgets_is_fixed_by_its_seed():
    budgets = _budgets(2.2, 2.0)
    draws = [joint_random(budgets, s) for s in (0, 0, 1)]
    assert draws[0] == draws[1] != draws[2]


def test_a_resumed_search_restores_the_prices_and_continues_as_an_uninterrupted_one():
    """The prices warm-start each step's bisection: a checkpoint holds them, and a price module
    loaded from it takes the same next step as the one that went on."""
    torch.manual_seed(0)
    logits_w, logits_a = torch.randn(len(LAYERS), 4), torch.randn(len(LAYERS), 3)
    going_on = JointPrice(_budgets(2.0, 1.5), ["bitops", "weight_size"])
    for _ in range(5):
        going_on.tilts(logits_w, logits_a)
        logits_w += 0.3 * torch.tensor(SPACE_W)  # the selectors drift: the prices must follow
    resumed = JointPrice(_budgets(2.0, 1.5), ["bitops", "weight_size"])
    resumed.load_state_dict(going_on.state_dict())
    assert torch.equal(resumed.prices, going_on.prices) and bool((resumed.prices > 0).any())
    assert torch.equal(going_on.tilts(logits_w, logits_a)[1], resumed.tilts(logits_w, logits_a)[1])
    fresh = JointPrice(_budgets(2.0, 1.5), ["bitops", "weight_size"])  # what a resume had
    fresh.tilts(logits_w, logits_a)
    assert not torch.equal(fresh.prices, going_on.prices)
