"""The cost protocol: each cost's table and totals against a hand count, budgets in weight
size, and a cost model that registers itself by being defined."""

import math

import numpy as np
import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf
from torch import nn

from edmips.cost import layers as cost_layers
from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost
from edmips.nn import MixedConv2d, MixedLinear
from edmips.search.budget import (
    Budget,
    BudgetPrice,
    check_reachable,
    closest_to_budget,
    random_allocation,
)

WSPACE, ASPACE = (1, 2, 4), (2, 4)


class TwoLayers(nn.Module):
    """conv 3->4 k3 p1 on 6x6 (FLOPs 3*4*9*36 = 3888, params 108), linear 4->2 on the pooled
    features (FLOPs 8, params 8)."""

    def __init__(self):
        super().__init__()
        self.conv = MixedConv2d(3, 4, 3, padding=1, bias=False, wbits=WSPACE, abits=ASPACE)
        self.fc = MixedLinear(4, 2, pool_input=True, wbits=WSPACE, abits=ASPACE)

    def forward(self, x):
        return self.fc(self.conv(x))


def _layers():
    net = TwoLayers()
    return [c for c, _ in cost_layers.searched(net, cost_layers.measure(net, (3, 6, 6)))]


def test_bitops_table_and_total_match_a_hand_count():
    conv, fc = _layers()
    assert (conv.flops, conv.params, fc.flops, fc.params) == (3888, 108, 8, 8)
    bitops = cost_models.get("bitops")
    table = bitops.table(conv, WSPACE, ASPACE)
    assert table.tolist() == [[3888 * w * a for a in ASPACE] for w in WSPACE]
    total = bitops.total([conv, fc], [2, 4], [4, 2])
    assert total == 3888 * 2 * 4 + 8 * 4 * 2
    assert bitops.stated_total(total, [conv, fc]) == math.sqrt(total / (3888 + 8))


def test_weight_size_table_and_total_match_a_hand_count():
    conv, fc = _layers()
    size = cost_models.get("weight_size")
    assert size.table(fc, WSPACE, ASPACE).tolist() == [[8 * w] * 2 for w in WSPACE]
    total = size.total([conv, fc], [2, 4], [4, 2])
    assert total == 108 * 2 + 8 * 4
    assert size.stated_total(total, [conv, fc]) == total / (108 + 8)  # bits per weight


def _toy_budget(target):
    """Sixteen layers of different sizes, each with the whole space."""
    params = [4608, 9216, 36864, 147456, 2304, 640, 73728, 18432] * 2
    layers = [LayerCost(f"l{i}", "conv", 10 * p, p, 0, ()) for i, p in enumerate(params)]
    n = len(layers)
    wspace, aspace = (1, 2, 3, 4), (2, 3, 4)
    return Budget(cost_models.get("weight_size"), layers, [wspace] * n, [aspace] * n, target)


def _stated(budget, wbits, abits):
    return budget.cost.stated_total(budget.cost.total(budget.layers, wbits, abits), budget.layers)


@pytest.mark.parametrize("target", [1.7, 2.5, 3.2])
def test_a_weight_size_budget_search_lands_within_one_percent(target):
    """The price holds the expected bits per weight on the target for selectors that prefer
    more bits, and the allocation made from them lands within 1%."""
    torch.manual_seed(0)
    budget = _toy_budget(target)
    price = BudgetPrice(budget)
    n = len(budget.layers)
    logits_w = torch.randn(n, 4) + torch.tensor([0.0, 1.0, 2.0, 3.0])
    logits_a = torch.randn(n, 3)
    _, tilt_w, tilt_a = price.tilts(logits_w, logits_a)
    pw, pa = torch.softmax(logits_w - tilt_w, -1), torch.softmax(logits_a - tilt_a, -1)
    share = torch.tensor([c.params for c in budget.layers], dtype=torch.float) / sum(
        c.params for c in budget.layers
    )
    expected = float((share * (pw * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum(-1)).sum())
    assert expected == pytest.approx(target, rel=1e-3)
    # weight size does not depend on the activations' bits: their tilt is one constant
    torch.testing.assert_close(pa, torch.softmax(logits_a, -1))
    for wbits, abits in (
        closest_to_budget(list(pw), list(pa), budget),
        random_allocation(budget, seed=0),
    ):
        assert abs(_stated(budget, wbits, abits) - target) <= 0.01 * target


def test_an_out_of_reach_weight_size_target_is_refused_naming_the_cost():
    check_reachable(_toy_budget(4.0))
    with pytest.raises(ValueError, match=r"5\.000 bits per weight \(weight_size\) is out of reach"):
        check_reachable(_toy_budget(5.0))


def test_an_out_of_reach_bitops_target_keeps_its_message():
    toy = _toy_budget(9.0)
    budget = Budget(cost_models.get("bitops"), toy.layers, toy.wspaces, toy.aspaces, 9.0)
    message = "target of 9.000 equivalent bits is out of reach: the space spans 1.414 to 4.000"
    with pytest.raises(ValueError, match=message):
        check_reachable(budget)


@cost_models.register
class Latency(cost_models.CostModel):
    """A measured per-layer table: no product of the bit-widths."""

    name = "test_latency"
    unit = "ms"
    MS = {(w, a): 1.0 + 0.5 * max(w, a) + 0.1 * w * a for w in (1, 2, 3, 4) for a in (2, 3, 4)}

    def entry(self, layer, w, a):
        return self.MS[w, a] * layer.flops / 1e5

    def size(self, layer):
        return 1


def test_a_cost_model_defined_anywhere_is_found_by_name_and_prices_its_table():
    latency = cost_models.get("test_latency")
    assert isinstance(latency, Latency) and "test_latency" in cost_models.names()
    assert {"bitops", "weight_size"} <= set(cost_models.names())
    with pytest.raises(ValueError, match="unknown cost 'nope'"):
        cost_models.get("nope")
    base = _toy_budget(1.0)
    low, high = (
        sum(float(np.min(latency.table(c, (1, 2, 3, 4), (2, 3, 4)))) for c in base.layers),
        sum(float(np.max(latency.table(c, (1, 2, 3, 4), (2, 3, 4)))) for c in base.layers),
    )
    n = len(base.layers)
    target = (low + 0.4 * (high - low)) / n  # stated per layer: size 1 each
    budget = Budget(latency, base.layers, base.wspaces, base.aspaces, target)
    check_reachable(budget)
    price = BudgetPrice(budget)
    assert not price.product
    logits_w, logits_a = torch.zeros(n, 4), torch.zeros(n, 3)
    _, tilt_w, tilt_a = price.tilts(logits_w, logits_a)
    pw, pa = torch.softmax(-tilt_w, -1), torch.softmax(-tilt_a, -1)
    tables = [torch.tensor(t, dtype=torch.float) for t in budget.tables()]
    spent = sum(float(p @ t @ q) for p, t, q in zip(pw, tables, pa)) / n
    assert spent == pytest.approx(target, rel=1e-3)
    # the allocation counts the cost in bins of 1/20000 of the dearest: with sixteen layers'
    # rounding the edge of a 1% tolerance can move by 0.15%, so ask for 0.8%
    wbits, abits = closest_to_budget(list(pw), list(pa), budget, tolerance=0.008)
    assert abs(_stated(budget, wbits, abits) - target) <= 0.01 * target


def test_every_cost_config_names_its_registered_cost():
    configs = sorted((ROOT / "conf" / "cost").glob("*.yaml"))
    assert [p.stem for p in configs] == [
        "activation_memory",
        "bitops",
        "latency_table",
        "weight_size",
    ]
    for path in configs:
        assert OmegaConf.load(path).name == path.stem
        assert cost_models.get(path.stem).name == path.stem


def test_the_expected_weight_size_is_the_selectors_expectation_and_has_a_gradient():
    net = TwoLayers()
    layers = cost_layers.searched(net, cost_layers.measure(net, (3, 6, 6)))
    with torch.no_grad():
        for _, m in layers:
            m.alpha_w.copy_(torch.tensor([0.0, 1.0, 2.0]))
    pw = torch.softmax(torch.tensor([0.0, 1.0, 2.0]), 0)
    ew = float((pw * torch.tensor([1.0, 2.0, 4.0])).sum())
    expected = cost_models.get("weight_size").expected(layers)
    assert float(expected) == pytest.approx(ew, rel=1e-6)  # the same E[w] in every layer
    expected.backward()
    for _, m in layers:  # the activations cost nothing here
        assert m.alpha_w.grad.abs().sum() > 0 and m.alpha_a.grad.abs().max() < 1e-6
