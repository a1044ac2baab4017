import math

import torch
from torch import nn

from edmips.cost import bitops as complexity
from edmips.cost import layers as cost_layers
from edmips.cost import model as cost_models
from edmips.cost.layers import activation_bits, measure
from edmips.cost.weight_size import fixed_weight_bits
from edmips.nn import MixedConv2d, MixedLinear, QuantConv2d


class SmallNet(nn.Module):
    """conv 3->8 k3 s1 p1 on 10x10, conv 8->16 k3 s2 p1 (-> 5x5), grouped conv 16->16 k3 g4,
    linear 16->4 on pooled features."""

    def __init__(self):
        super().__init__()
        self.a = QuantConv2d(3, 8, 3, padding=1, bias=False, wbits=8, abits=None)
        self.b = MixedConv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.c = MixedConv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.d = MixedLinear(16, 4, pool_input=True)

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))))


def test_flops_and_bitops_match_a_hand_count():
    net = SmallNet()
    costs = measure(net, (3, 10, 10))
    assert [c.name for c in costs] == ["a", "b", "c", "d"]
    # Cin/groups * Cout * kh * kw * Hout * Wout
    assert [c.flops for c in costs] == [3 * 8 * 9 * 100, 8 * 16 * 9 * 25, 4 * 16 * 9 * 25, 16 * 4]
    assert [c.params for c in costs] == [216, 1152, 576, 64]
    assert [c.input_numel for c in costs] == [300, 800, 400, 400]
    layers = cost_layers.searched(net, costs)
    assert [c.name for c, _ in layers] == ["b", "c", "d"]
    wbits, abits = [1, 2, 4], [2, 3, 4]
    hand = 28800 * 1 * 2 + 14400 * 2 * 3 + 64 * 4 * 4
    searched = [c for c, _ in layers]
    assert complexity.bitops(searched, wbits, abits) == hand
    assert math.isclose(
        complexity.equivalent_bits(hand, 28800 + 14400 + 64), math.sqrt(hand / 43264)
    )
    weight_size = cost_models.get("weight_size")
    assert weight_size.total(searched, wbits, abits) == 1152 * 1 + 576 * 2 + 64 * 4
    # the fixed-bit first conv, outside the search: 216 weights at 8 bits
    assert fixed_weight_bits(net, [c.name for c in searched]) == 216 * 8
    assert activation_bits(searched, abits) == 800 * 2 + 400 * 3 + 400 * 4


def test_expected_bitops_uses_the_softmax_expectations():
    net = SmallNet()
    layers = cost_layers.searched(net, measure(net, (3, 10, 10)))
    with torch.no_grad():
        for _, m in layers:
            m.alpha_w.copy_(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    pw = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0)
    ew = float((pw * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum())
    expected = sum(c.flops * ew * 3.0 for c, _ in layers)  # uniform over {2,3,4} -> 3
    assert math.isclose(float(complexity.expected_bitops(layers)), expected, rel_tol=1e-5)
    # the expected equivalent bits, over the FLOPs of the searched layers (28800 + 14400 + 64)
    loss = float(complexity.expected_equivalent_bits(layers))
    assert math.isclose(loss, math.sqrt(expected / 43264), rel_tol=1e-5)


def test_descending_the_complexity_gradient_lowers_the_expected_bits():
    net = SmallNet()
    layers = cost_layers.searched(net, measure(net, (3, 10, 10)))
    arch = [p for n, p in net.named_parameters() if n.endswith(("alpha_w", "alpha_a"))]
    opt = torch.optim.SGD(arch, lr=1.0)  # the loss is in bits, not BitOps
    before = float(complexity.expected_equivalent_bits(layers))
    for _ in range(5):
        opt.zero_grad()
        complexity.expected_equivalent_bits(layers).backward()
        opt.step()
    after = float(complexity.expected_equivalent_bits(layers))
    assert after < before - 0.05
    for _, m in layers:  # every selector moved mass to its lowest bit-width
        assert m.probs_w().argmax() == 0 and m.probs_a().argmax() == 0
