"""One interface for one budget or several (edmips.search.budgets.Budgets): built from parsed
budget specs, it answers with one budget's semantics (a target within 1%, a price that may go
negative) or several's (upper bounds, prices >= 0) without its caller asking which."""

import pytest
import torch
from test_joint import LAYERS, SPACE_A, SPACE_W

from edmips.cost import budget_spec
from edmips.cost import model as cost_models
from edmips.search.budget import BudgetPrice, best_scoring, closest_to_budget, random_allocation
from edmips.search.budgets import Budgets
from edmips.search.joint import JointPrice, joint_best, joint_closest, joint_random

N = len(LAYERS)
COSTS = {name: cost_models.get(name) for name in ("bitops", "weight_size")}
WEIGHTS = sum(c.params for c in LAYERS)


def _budgets(**keys) -> Budgets:
    specs = budget_spec.parse(keys, keys.pop("target_bits", None), None, "bitops")
    return Budgets.of(specs, COSTS, LAYERS, [SPACE_W] * N, [SPACE_A] * N, fixed_weight_bits=800)


def _probs(seed):
    torch.manual_seed(seed)
    pw = [torch.softmax(torch.randn(4), 0) for _ in LAYERS]
    pa = [torch.softmax(torch.randn(3), 0) for _ in LAYERS]
    return pw, pa


def test_one_budget_answers_as_a_target_within_one_percent():
    budgets = _budgets(target_bits=2.5)
    (only,) = budgets.held
    assert only.target == 2.5 and not budgets.several
    assert isinstance(budgets.price(), BudgetPrice)
    pw, pa = _probs(0)
    assert budgets.closest(pw, pa) == closest_to_budget(pw, pa, only)
    assert budgets.random(3) == random_allocation(only, 3)
    scores = [torch.rand(4, 3).numpy() for _ in LAYERS]
    assert budgets.best(scores) == best_scoring(scores, only)
    wbits, abits = budgets.random(3)
    assert budgets.record(wbits, abits) == {"cost": "bitops", "target_bits": 2.5}


def test_several_budgets_answer_as_upper_bounds_with_their_spend_recorded():
    size = 2.5 * WEIGHTS + 800  # the searched weights at 2.5 bits each, and the fixed ones
    budgets = _budgets(target_bits=3, weight_size=f"{size:.0f}")
    bitops, weights = budgets.held
    assert budgets.several and weights.target == pytest.approx(2.5)
    assert budgets.labels == ["target_bits=3", f"budget.weight_size={size:.0f}"]
    assert isinstance(budgets.price(), JointPrice)
    pw, pa = _probs(1)
    assert budgets.closest(pw, pa) == joint_closest(pw, pa, budgets.held)
    assert budgets.random(3) == joint_random(budgets.held, 3)
    scores = [torch.rand(4, 3).numpy() for _ in LAYERS]
    assert budgets.best(scores) == joint_best(scores, budgets.held)
    wbits, abits = budgets.random(3)
    record = budgets.record(wbits, abits)
    assert record["cost"] == "bitops" and record["target_bits"] == 3
    assert [b["budget"] for b in record["budgets"]] == budgets.labels
    assert record["budgets"][1]["achieved"] <= 2.5 * 1.01


def test_an_allocation_that_misses_the_budgets_is_said_in_one_line():
    one = _budgets(target_bits=2.5)
    assert one.missed(*one.random(3)) is None
    line = one.missed([4] * N, [4] * N)
    assert line.startswith("no allocation within 1% of the target 2.5 equivalent bits was found")
    size = 2.5 * WEIGHTS + 800
    several = _budgets(target_bits=3, weight_size=f"{size:.0f}")
    assert several.missed(*several.random(3)) is None
    line = several.missed([3] * N, [2] * N)  # 3 bits per weight, the size's target 2.5
    assert line.startswith("no allocation within every budget was found: budget.weight_size=")
    assert "over its target of 2.5" in line


def test_one_budget_key_s_errors_name_it_and_a_target_key_s_do_not():
    with pytest.raises(ValueError, match=r"^budget.weight_size=900B: target of [\d.]+ bits per"):
        _budgets(weight_size="900B")  # in reach of nothing: 1 bit per weight costs more
    with pytest.raises(ValueError, match=r"^target of 9.000 equivalent bits is out of reach"):
        _budgets(target_bits=9)
    with pytest.raises(ValueError, match=r"^budget.weight_size=50B: the fixed-bit layers outside"):
        _budgets(weight_size="50B")
