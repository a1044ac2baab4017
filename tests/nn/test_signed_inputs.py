"""Signed inputs in the search (`space.sbits`): a layer that reads a signed 8-bit tensor (a
linear bottleneck, a residual sum) requantizes it to searched bits of its own, and those bits
are what the records, the budget and the retrained network use."""

import pytest
import torch

from edmips.models import create_model
from edmips.nn import input_space, to_fixed, to_float, to_search
from edmips.nn.convert import default_searched
from edmips.nn.layers import INPUT_BITS
from edmips.programs.baselines import baseline_arch
from edmips.programs.checks import check_retrain
from edmips.programs.retrain import check_matches
from edmips.quant.registry import get
from edmips.records import arch

# One network for the module (a module fixture): built once, on one worker.
pytestmark = pytest.mark.xdist_group("signed_inputs")


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    return create_model("tv_mobilenet_v2", num_classes=10)


def _signed(model, names):
    return [n for n in names if get(model.get_submodule(n).aquant).signed]


def test_each_layer_has_the_input_space_of_what_it_reads():
    assert input_space("hwgq", (2, 3, 4), (4, 6, 8)) == (2, 3, 4)
    assert input_space("ema", (2, 3, 4), (4, 6, 8)) == (4, 6, 8)
    assert input_space("ema", (2, 3, 4), None) == (INPUT_BITS,)
    assert input_space("image", (2, 3, 4), (4, 6, 8)) == (INPUT_BITS,)


def test_searched_signed_inputs_get_candidates_of_their_own(mobilenet):
    model = create_model("tv_mobilenet_v2", num_classes=10)
    names = default_searched(model)
    signed = _signed(model, names)
    assert len(signed) == 17  # what reads a linear bottleneck or a residual sum
    to_search(model, names, (2, 4), (2, 4), sbits=(4, 6, 8))
    for n in signed:
        layer = model.get_submodule(n)
        assert layer.abits_space() == (4, 6, 8)
        assert all(q.signed for q in layer.input_quants)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    assert all(model.get_submodule(n).alpha_a.grad is not None for n in signed)

    without = create_model("tv_mobilenet_v2", num_classes=10)
    to_search(without, names, (2, 4), (2, 4))
    assert all(without.get_submodule(n).abits_space() == (INPUT_BITS,) for n in signed)


def test_a_fixed_signed_input_below_8_bits_is_requantized_and_8_bits_read_as_they_are():
    model = create_model("tv_mobilenet_v2", num_classes=10)
    signed = _signed(model, default_searched(model))
    to_fixed(model, {signed[0]: (4, 4), signed[1]: (4, 8)})
    low, full = model.get_submodule(signed[0]), model.get_submodule(signed[1])
    assert low.input_quant.signed and low.abits == 4 and low.bit_config() == (4, 4)
    assert full.input_quant is None and full.bit_config() == (4, INPUT_BITS)


def test_the_float_network_keeps_the_state_dict_keys_of_the_quantized_one():
    quantized = create_model("tv_mobilenet_v2", num_classes=10)
    keys = set(quantized.state_dict())
    assert set(to_float(create_model("tv_mobilenet_v2", num_classes=10)).state_dict()) == keys


def test_a_uniform_baseline_records_the_8_bits_a_signed_input_is_read_at(mobilenet, retrain_cfg):
    cfg = retrain_cfg("model=tv_mobilenet_v2", "arch=uniform", "wbits=4", "abits=4")
    names = default_searched(mobilenet)
    costs = [arch.LayerCost(n, "conv", 100, 10, 0, ()) for n in names]
    found = baseline_arch(cfg, check_retrain(cfg), mobilenet, costs, "synthetic")
    signed = set(_signed(mobilenet, names))
    assert {x.abits for x in found.layers if x.name in signed} == {INPUT_BITS}
    assert {x.abits for x in found.layers if x.name not in signed} == {4}
    assert found.equivalent_bits > 4


def test_a_random_allocation_draws_signed_inputs_from_the_signed_space(mobilenet, retrain_cfg):
    cfg = retrain_cfg(
        "model=tv_mobilenet_v2", "arch=random", "target_bits=3", "space.sbits=[4,6,8]"
    )
    names = default_searched(mobilenet)
    costs = [arch.LayerCost(n, "conv", 100 + i, 10, 0, ()) for i, n in enumerate(names)]
    found = baseline_arch(cfg, check_retrain(cfg), mobilenet, costs, "synthetic")
    signed = set(_signed(mobilenet, names))
    assert found.space["sbits"] == [4, 6, 8]
    assert {x.abits for x in found.layers if x.name in signed} <= {4, 6, 8}
    assert {x.abits for x in found.layers if x.name not in signed} <= {2, 3, 4}
    assert found.equivalent_bits == pytest.approx(3, rel=0.01)


def test_an_arch_file_with_a_signed_input_outside_its_space_is_refused(mobilenet):
    names = default_searched(mobilenet)
    costs = [arch.LayerCost(n, "conv", 100, 10, 0, ()) for n in names]
    quantizers = [(m.wquant, m.aquant) for m in map(mobilenet.get_submodule, names)]
    signed = _signed(mobilenet, names)
    abits = [4 if n in signed else 2 for n in names]
    space = {"wbits": [2], "abits": [2]}
    found = arch.build(
        "tv_mobilenet_v2", space, costs, [2] * len(names), abits, None, None, quantizers
    )
    with pytest.raises(arch.ArchError, match="signed space") as e:
        check_matches(found, "tv_mobilenet_v2", costs, "found.json", set(signed))
    assert "\n" not in str(e.value)
    ok = arch.build(
        "tv_mobilenet_v2",
        {**space, "sbits": [4]},
        costs,
        [2] * len(names),
        abits,
        None,
        None,
        quantizers,
    )
    check_matches(ok, "tv_mobilenet_v2", costs, "found.json", set(signed))
    assert arch.from_dict(ok.to_dict()).space["sbits"] == [4]
