"""ptq.py arch=sensitivity: each layer's measured loss increase, the budget's best allocation
from it, exported with agreement 1.0."""

import itertools
import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import make_config
from test_ptq_program import QUICK, allocated_within, float_weights  # noqa: F401 (a fixture)

from edmips.cost import model as cost_models
from edmips.cost.layers import LayerCost
from edmips.models import create_model
from edmips.nn.convert import reads_signed
from edmips.programs.checks import ConfigError
from edmips.programs.ptq import ptq
from edmips.ptq import stats
from edmips.search.budget import Budget, best_scoring

SENSITIVITY = ["arch=sensitivity", "target_bits=3", "sensitivity.images=8"]


def test_the_allocation_is_the_best_scoring_one_within_budget(ptq_cfg, float_weights):  # noqa: F811
    cfg = ptq_cfg(f"model.weights={float_weights}", *SENSITIVITY, *QUICK)
    arch = allocated_within(cfg, "sensitivity", 3)
    assert arch["sensitivity_loss"] == "kl_to_float"
    assert arch["sensitivity_quant"] == {  # ptq's family in its int8 forms (the default)
        "activation": "clipped_int8",
        "weight": "maxabs_f32",
        "signed": "clipped_signed_int8",
    }
    space = arch["space"]
    tables = {n: np.array(t) for n, t in arch["loss_increase"].items()}
    layers = [layer for layer in arch["layers"] if layer["name"] in tables]
    assert len(layers) == len(tables) == 5
    for t in tables.values():
        assert t.shape == (len(space["wbits"]), len(space["abits"]))
        # the measured layer's lowest bits move the network more than its highest
        assert t[0, 0] > t[-1, -1]
    chosen = sum(
        tables[layer["name"]][
            space["wbits"].index(layer["wbits"]), space["abits"].index(layer["abits"])
        ]
        for layer in layers
    )
    assert chosen == pytest.approx(min_within_budget(layers, tables, space, 3.0), abs=1e-12)


def min_within_budget(layers, tables, space, target) -> float:
    """The least summed loss increase over every allocation within 1% of the target."""
    flops = np.array([layer["flops"] for layer in layers], dtype=float)
    options = list(itertools.product(space["wbits"], space["abits"]))
    best = np.inf
    for choice in itertools.product(range(len(options)), repeat=len(layers)):
        ops = sum(f * options[c][0] * options[c][1] for f, c in zip(flops, choice))
        if abs(np.sqrt(ops / flops.sum()) - target) <= 0.01 * target:
            w = [options[c] for c in choice]
            loss = sum(
                tables[layer["name"]][space["wbits"].index(a), space["abits"].index(b)]
                for layer, (a, b) in zip(layers, w)
            )
            best = min(best, loss)
    return best


def test_refit_lowers_what_low_bit_weights_cost_and_leaves_the_weights(float_weights, tmp_path):  # noqa: F811
    def run(name, *overrides):
        cfg = make_config(
            "ptq", tmp_path / name, [f"model.weights={float_weights}", *QUICK, *overrides],
            ["model=resnet_tiny"],
        )  # fmt: skip
        return cfg, ptq(cfg)

    kl_cfg, _ = run("kl", *SENSITIVITY)
    refit_cfg, refit_result = run("refit", *SENSITIVITY, "sensitivity.measure=refit")
    kl, refit = (json.loads(open(f"{c.output_dir}/arch.json").read()) for c in (kl_cfg, refit_cfg))
    assert refit["sensitivity_loss"] == "kl_after_refit"
    for name, table in refit["loss_increase"].items():
        # the weights learnt at their lowest bits: less of the increase is left
        assert (np.array(table)[0] < np.array(kl["loss_increase"][name])[0]).all()
    # the learnt weights were only measured: the allocation is quantized from the float ones
    _, given = run("given", f"arch={refit_cfg.output_dir}/arch.json")
    assert refit_result["test_acc"] == given["test_acc"]


def test_the_most_sensitive_layer_gets_the_most_bits():
    layers = [LayerCost(f"l{i}", "conv", 1000, 100, 64, (1, 4, 4, 4)) for i in range(4)]
    space = (2, 3, 4)
    budget = Budget(cost_models.get("bitops"), layers, [space] * 4, [space] * 4, 3.0)
    bits = np.array(space, dtype=float)
    increase = [np.outer(1 / bits, 1 / bits) * scale for scale in (0.01, 10.0, 0.01, 0.01)]
    wbits, abits = best_scoring([-t for t in increase], budget)
    assert wbits[1] * abits[1] == max(w * a for w, a in zip(wbits, abits)) == 16
    assert wbits[1] * abits[1] > min(w * a for w, a in zip(wbits, abits))


def test_sensitivity_needs_a_budget(ptq_cfg, float_weights):  # noqa: F811
    with pytest.raises(ConfigError, match="^arch=sensitivity needs a budget: add target_bits=B"):
        ptq(ptq_cfg(f"model.weights={float_weights}", "arch=sensitivity"))


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def test_the_allocation_meets_a_weight_size_budget_beside_target_bits(ptq_cfg, float_weights):  # noqa: F811
    # two upper bounds: 3 equivalent bits and 1700 bytes for every quantized weight, of which
    # the unsearched first conv and classifier take 3008 bits
    cfg = ptq_cfg(
        f"model.weights={float_weights}", *SENSITIVITY, "budget.weight_size=1700B", *QUICK
    )
    result = ptq(cfg)
    assert result["prediction_agreement"] == 1.0
    arch = json.loads(open(f"{cfg.output_dir}/arch.json").read())
    assert arch["fixed_weight_bits"] == 3008
    assert result["equivalent_bits"] <= 3 * 1.01
    assert result["weight_bits_total"] <= 1700 * 8 * 1.01
    tight = max(result["equivalent_bits"] / 3, result["weight_bits_total"] / (1700 * 8))
    assert tight >= 0.99  # the binding budget is met within 1%
    assert [b["budget"] for b in arch["budgets"]] == ["target_bits=3", "budget.weight_size=1700B"]
    assert result["budgets"] == arch["budgets"] and result["budget"] == {"weight_size": "1700B"}


@pytest.mark.parametrize("family", ["ptq", "edmips"])  # clipped, moving-range signed inputs
def test_signed_inputs_are_measured_and_allocated_in_the_signed_space(family, ptq_cfg, tmp_path):
    """space.sbits: a layer that reads a signed tensor (mobilenet_v2's linear bottlenecks and
    residual sums) is measured requantizing it to each signed candidate, at 8 bits reading the
    shared tensor as it is, and the allocation takes its bits from that space; the calibration
    statistics kept are the allocated network's."""
    torch.manual_seed(0)
    body = torchvision.models.mobilenet_v2(num_classes=10)  # torchvision's own state dict
    for m in body.modules():  # batch norms with the statistics of images: logits that vary
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a cumulative average
    with torch.no_grad():
        body(torch.rand(32, 3, 32, 32))
    torch.save(body.state_dict(), tmp_path / "weights.pt")
    model = create_model("tv_mobilenet_v2", num_classes=10)
    cfg = ptq_cfg(
        "model=tv_mobilenet_v2", f"model.weights={tmp_path / 'weights.pt'}",
        "arch=sensitivity", "target_bits=4", "sensitivity.images=8",
        "space.wbits=[4]", "space.abits=[2,4]", "space.sbits=[4,8]", f"quant={family}", *QUICK,
    )  # fmt: skip
    arch = allocated_within(cfg, "sensitivity", 4)
    assert arch["space"]["sbits"] == [4, 8]
    signed = {n for n in arch["loss_increase"] if reads_signed(model.get_submodule(n).aquant)}
    assert len(signed) == 17
    tables = {n: np.array(arch["loss_increase"][n]) for n in signed}
    assert all(t.shape == (1, 2) for t in tables.values())
    # requantizing a signed input to 4 bits moves the network more than reading its 8 bits
    increases = [t[0, 0] - t[0, 1] for t in tables.values()]
    assert np.mean(increases) > 0 and np.median(increases) > 0
    chosen = {layer["name"]: layer["abits"] for layer in arch["layers"]}
    assert {chosen[n] for n in signed} <= {4, 8} and 4 in {chosen[n] for n in signed}
    kept = stats.load(f"{cfg.output_dir}/{stats.FILE}")
    gathered = {**kept.clips, **kept.ranges}
    assert all((f"{n}.input_quant" in gathered) == (chosen[n] == 4) for n in signed)
