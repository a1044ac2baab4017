"""ptq.py arch=search: the search's selectors learned alone on training images, the float
weights frozen; the most probable allocation within the budget, exported with agreement 1.0."""

import itertools

import numpy as np
import pytest
import torch
from test_ptq_program import QUICK, allocated_within, float_weights  # noqa: F401 (a fixture)

from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost
from edmips.models import create_model
from edmips.nn import to_search
from edmips.nn.convert import default_searched
from edmips.nn.layers import is_selector
from edmips.programs.checks import ConfigError
from edmips.programs.ptq import ptq
from edmips.search.budget import Budget, BudgetPrice
from edmips.search.post_training import learn_selectors

SEARCH = ["arch=search", "target_bits=3", "search.steps=20", "search.images=16"]
SEARCH += ["search.batch_size=4"]


def test_the_allocation_is_the_most_probable_within_budget(ptq_cfg, float_weights):  # noqa: F811
    cfg = ptq_cfg(f"model.weights={float_weights}", *SEARCH, *QUICK)
    arch = allocated_within(cfg, "calibration_search", 3)
    assert arch["discretization"] == "budget"
    assert arch["search_steps"] == 20 and arch["search_images"] == 16
    assert arch["target_bits"] == 3
    searched = [layer for layer in arch["layers"] if layer["probs_w"]]
    assert len(searched) == 5
    space = arch["space"]
    for layer in searched:  # the selectors learned: no longer the uniform start
        assert max(layer["probs_w"]) - min(layer["probs_w"]) > 1e-3

    def score(layer, w, a) -> float:
        return np.log(layer["probs_w"][space["wbits"].index(w)]) + np.log(
            layer["probs_a"][space["abits"].index(a)]
        )

    chosen = sum(score(layer, layer["wbits"], layer["abits"]) for layer in searched)
    flops = np.array([layer["flops"] for layer in searched], dtype=float)
    options = list(itertools.product(space["wbits"], space["abits"]))
    best = -np.inf
    for choice in itertools.product(options, repeat=len(searched)):
        ops = sum(f * w * a for f, (w, a) in zip(flops, choice))
        if abs(np.sqrt(ops / flops.sum()) - 3) <= 0.01 * 3:
            best = max(best, sum(score(layer, *c) for layer, c in zip(searched, choice)))
    assert chosen == pytest.approx(best, abs=1e-9)


def test_only_the_selectors_learn_and_the_budget_holds_every_step():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10).eval()
    images = torch.rand(16, 3, 16, 16)
    with torch.no_grad():
        reference = model(images)
    names = default_searched(model, True, True)
    to_search(model, names, (2, 4, 8), (2, 4, 8))
    layers = [model.get_submodule(n) for n in names]
    costs = [
        LayerCost(n, "conv", 1000 * (k + 1), 100, 64, (1, 4, 4, 4)) for k, n in enumerate(names)
    ]
    bitops = cost_models.get("bitops")
    price = BudgetPrice(
        Budget(bitops, costs, [m.wbits for m in layers], [m.abits_space() for m in layers], 4.0)
    )
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    expected = []
    layers[0].register_forward_pre_hook(
        lambda *_: expected.append(float(bitops.expected(list(zip(costs, layers))).detach()))
    )
    losses, final = learn_selectors(model, layers, price, images, reference, 30, 1.0, 10.0, 8, 0)
    assert len(losses) == 30 and np.isfinite(final)
    assert np.mean(losses[-5:]) < losses[0]  # the mixture moved towards the float network
    assert expected == pytest.approx([4.0] * 30, rel=1e-3)  # on the target at every step
    after = model.state_dict()
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all(
        is_selector(n) or n.endswith(("tilt_w", "tilt_a", "sharpness")) for n in moved
    )
    assert all(p.requires_grad for p in model.parameters())  # as they came


def test_search_needs_a_budget_and_counts(ptq_cfg, float_weights):  # noqa: F811
    with pytest.raises(ConfigError, match="^arch=search needs a budget: add target_bits=B"):
        ptq(ptq_cfg(f"model.weights={float_weights}", "arch=search"))
    with pytest.raises(ConfigError, match="^search.steps must be >= 1, got 0$"):
        ptq(ptq_cfg(f"model.weights={float_weights}", *SEARCH, "search.steps=0"))
