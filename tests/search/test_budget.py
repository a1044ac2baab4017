"""Budget mode: the price holds the expected bits on the target, the selectors learn which
layers deserve bits, and the discretized network (searched or random) lands on the target."""

import csv
import math

import pytest
import torch
from torch import nn

from edmips.cost import layers as cost_layers
from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost, searched
from edmips.nn.layers import MixedLinear
from edmips.programs.retrain import retrain
from edmips.programs.search import search
from edmips.report import collect, write_report
from edmips.search.budget import Budget, closest_to_budget, random_allocation
from edmips.search.budgets import Budgets
from edmips.search.module import SearchModule

SPACE_W, SPACE_A = (1, 2, 3, 4), (2, 3, 4)


class Branches(nn.Module):
    """Searched linear layers side by side, all reading the same input."""

    def __init__(self, outs, features=16):
        super().__init__()
        self.branches = nn.ModuleList(MixedLinear(features, o) for o in outs)

    def forward(self, x):
        return [b(x) for b in self.branches]


def _search_module(model, features=16, target_bits=None, sharpness=1.0):
    costs = cost_layers.measure(model, (features,))
    budgets = None
    if target_bits is not None:
        layers = searched(model, costs)
        budget = Budget(
            cost_models.get("bitops"),
            [c for c, _ in layers],
            [m.wbits for _, m in layers],
            [m.abits_space() for _, m in layers],
            target_bits,
        )
        budgets = Budgets([budget], [f"target_bits={target_bits}"])
    return SearchModule(
        model,
        costs,
        num_classes=2,
        mu=0.0,
        optimizer=torch.optim.SGD,
        arch_optimizer=torch.optim.SGD,
        sharpness=sharpness,
        budgets=budgets,
    )


def test_the_price_holds_the_bits_on_the_target_while_the_selectors_drift_both_ways():
    """A simulated plant: eight layers of different FLOPs whose selectors drift towards more
    bits, then hard towards fewer (the undershoot the former multiplier never recovered from),
    with noise. The expected bits stay within 2% of the target at every step, and the price
    turns negative to hold them up."""
    torch.manual_seed(0)
    module = _search_module(Branches([16, 32, 48] * 2 + [8, 64]), target_bits=2.5)
    bits = torch.tensor(SPACE_W, dtype=torch.float)
    speed = 1 + torch.rand(8)
    seen, prices = [], []
    for step in range(300):
        direction = 1.0 if step < 150 else -3.0
        with torch.no_grad():
            for (_, layer), v in zip(module.layers, speed):
                layer.alpha_w.add_(0.02 * direction * v * bits + 0.05 * torch.randn(4))
                layer.alpha_a.add_(0.02 * direction * v * bits[1:] + 0.05 * torch.randn(3))
        module.apply_budget()
        seen.append(float(module.expected_cost().detach()))
        prices.append(float(module.mu))
    assert max(abs(b / 2.5 - 1) for b in seen) <= 0.02
    assert prices[149] > 0 > prices[-1]


def test_a_layer_more_sensitive_to_quantization_ends_with_more_bits():
    """Two layers with equal FLOPs; the loss weighs the first one's quantization error 25x more.
    Under a budget the selectors give it more bits than the other. (With Adam instead of SGD
    both end alike: Adam divides each selector's gradient by its own scale, which is exactly
    the information that says how much the loss cares about that layer.)"""
    torch.manual_seed(0)
    model = Branches([16, 16])
    module = _search_module(model, target_bits=2.5)
    opt = torch.optim.SGD(_arch_params(model), lr=1.0, momentum=0.9)
    for _ in range(100):
        x = torch.randn(64, 16).abs().clamp(max=1.5)  # inside every candidate's clip
        module.apply_budget()
        out = model(x)
        with torch.no_grad():  # the float layers
            ref = [nn.functional.linear(x, b.weight) for b in model.branches]
        loss = 25 * (out[0] - ref[0]).pow(2).mean() + (out[1] - ref[1]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.apply_budget()
    (_, sensitive), (_, plain) = module.layers
    w_s, a_s = sensitive.expected_bits()
    w_p, a_p = plain.expected_bits()
    assert float(w_s * a_s) > float(w_p * a_p) + 2
    assert float(module.expected_cost().detach()) == pytest.approx(2.5, rel=0.01)


def _arch_params(model):
    return [p for n, p in model.named_parameters() if n.endswith(("alpha_w", "alpha_a"))]


def _budget(flops, target):
    """A BitOps budget over layers of these FLOPs, each with the whole space."""
    layers = [LayerCost(f"l{i}", "linear", f, 0, 0, ()) for i, f in enumerate(flops)]
    n = len(flops)
    return Budget(cost_models.get("bitops"), layers, [SPACE_W] * n, [SPACE_A] * n, target)


def _bits(flops, w, a):
    return math.sqrt(sum(f * x * y for f, x, y in zip(flops, w, a)) / sum(flops))


@pytest.mark.parametrize("target", [1.5, 2.0, 2.6, 3.3])
def test_budget_discretization_lands_within_one_percent(target):
    torch.manual_seed(0)
    flops = [2_359_296] * 6 + [1_179_648, 131_072] + [2_359_296] * 5 + [1_179_648, 131_072]
    pw = [torch.softmax(torch.randn(4) * 0.1, 0) for _ in flops]
    pa = [torch.softmax(torch.randn(3) * 0.1, 0) for _ in flops]
    w, a = closest_to_budget(pw, pa, _budget(flops, target))
    assert abs(_bits(flops, w, a) - target) <= 0.01 * target


def test_budget_discretization_keeps_winner_take_all_when_it_fits():
    torch.manual_seed(1)
    flops = [1000, 2000, 500, 4000, 800]
    pw = [torch.softmax(torch.randn(4) * 4, 0) for _ in flops]
    pa = [torch.softmax(torch.randn(3) * 4, 0) for _ in flops]
    w0 = [SPACE_W[int(p.argmax())] for p in pw]
    a0 = [SPACE_A[int(p.argmax())] for p in pa]
    target = _bits(flops, w0, a0)
    assert closest_to_budget(pw, pa, _budget(flops, target)) == (w0, a0)


@pytest.mark.slow
def test_two_budgets_land_within_two_percent_and_the_sweep_reports(
    search_cfg, retrain_cfg, tmp_path, no_search_figures
):
    """A budget sweep, a uniform baseline retrained, and the report built from the sweep dir."""
    sweep = tmp_path / "sweep"
    for i, target in enumerate((2.0, 3.0)):
        cfg = search_cfg("model=resnet8", f"target_bits={target}")
        cfg.output_dir = str(sweep / str(i))
        found = search(cfg)["arch"]
        assert abs(found.equivalent_bits - target) <= 0.02 * target
        assert found.extra["target_bits"] == target
        # uniform selectors spend 2.74 bits: the price is positive below that, negative above
        assert (found.extra["final_mu"] > 0) == (target < 2.74)
    cfg = retrain_cfg("model=resnet8", "arch=uniform", "wbits=2", "abits=2", "trainer.max_epochs=1")
    cfg.output_dir = str(sweep / "2")
    retrain(cfg)

    paths = write_report(collect([sweep]), tmp_path / "report")
    rows = list(csv.DictReader(open(paths["csv"])))
    two, three = "BitOps 2 bits eq.", "BitOps 3 bits eq."
    assert sorted(r["budget"] for r in rows) == [two, three, "uniform W2A2"]
    for row in rows:
        assert float(row["equivalent_bits"]) == pytest.approx(
            {two: 2.0, three: 3.0, "uniform W2A2": 2.0}[row["budget"]], rel=0.02
        )
    assert paths["pareto"].stat().st_size > 10_000


@pytest.mark.parametrize("target", [1.8, 2.6, 3.3])
def test_a_random_allocation_lands_within_one_percent_and_is_fixed_by_its_seed(target):
    flops = [2_359_296] * 6 + [1_179_648, 131_072] + [2_359_296] * 5 + [1_179_648, 131_072]
    draw = [random_allocation(_budget(flops, target), s) for s in (0, 0, 1)]
    for w, a in draw:
        assert abs(_bits(flops, w, a) - target) <= 0.01 * target
    assert draw[0] == draw[1] and draw[0] != draw[2]
    assert len(set(draw[0][0])) > 1  # not uniform in disguise
