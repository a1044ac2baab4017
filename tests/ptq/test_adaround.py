"""AdaRound (ptq.rounding=adaround): codes at most one level from nearest on the unchanged grid,
a lower layer output error than nearest rounding, and ptq.py's export still bit-exact."""

import json

import pytest
import torch
import torch.nn.functional as F
from test_ptq_program import float_weights  # noqa: F401 (a fixture)
from torch import nn

from edmips.nn.layers import QuantConv2d, QuantLinear
from edmips.programs.checks import check_ptq
from edmips.programs.ptq import ptq
from edmips.ptq import adaround, float_copy, rounding

QUICK = ["data.num_test=64", "calibration.images=16"]
# A few steps: the end-to-end test checks the export, not how well the rounding is learned.
QUICK_ADAROUND = [
    "ptq.adaround.iterations=20",
    "ptq.adaround.images=16",
    "ptq.adaround.batch_size=8",
]


def smooth_activations(images: int, channels: int, size: int, seed: int) -> torch.Tensor:
    """Non-negative, spatially correlated feature maps, like a ReLU network's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(images, channels, size, size, generator=g)
    return F.avg_pool2d(x, 3, 1, 1).relu()


def conv(wbits: int, per_channel: bool = True, **kw) -> QuantConv2d:
    torch.manual_seed(0)
    return QuantConv2d(
        8,
        12,
        3,
        padding=1,
        wbits=wbits,
        abits=32,
        per_channel=per_channel,
        wquant="maxabs",
        aquant="clipped",
        **kw,
    )


def learned(layer: nn.Module, x: torch.Tensor, iterations: int = 60, seed: int = 0):
    """`layer` rounded by AdaRound against its own float output on x; the result."""
    with torch.no_grad():
        target = layer.weight.detach().clone()
        float_out = layer.weighted(x, target, layer.bias)
    settings = adaround.Settings(iterations, len(x), batch_size=16, regularization=0.01)
    generator = torch.Generator().manual_seed(seed)
    return adaround.round_layer(layer, x, float_out, settings, generator)


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("wbits", [2, 3])
def test_learned_codes_are_within_one_level_of_nearest_on_the_same_grid(per_channel, wbits):
    layer = conv(wbits, per_channel)
    with torch.no_grad():
        layer.weight[3] = 0  # a channel of zeros: no scale to keep but its own
    nearest, scale = layer.integer_weight()
    peak = layer.weight.detach().abs().flatten(1).amax(1 if per_channel else (0, 1))
    result = learned(layer, smooth_activations(64, 8, 10, seed=1))
    codes, kept = layer.integer_weight()
    assert torch.equal(kept, scale)  # bit for bit: the export's scale is the calibration's
    assert torch.equal(
        layer.weight.detach().abs().flatten(1).amax(1 if per_channel else (0, 1)), peak
    )
    assert (codes - nearest).abs().max() <= 1
    assert codes.abs().max() <= layer.weight_quant.max_code
    assert torch.equal(codes[3], torch.zeros_like(codes[3]))
    changed = int((codes != nearest).sum())
    assert changed > 0 and changed == result.changed  # it learned, and says what it changed
    on_grid = layer.quant_weight().detach()  # stored on the grid, up to float rounding
    assert torch.allclose(on_grid, layer.weight.detach(), rtol=1e-6, atol=0)


def test_per_channel_bits_keep_each_channel_s_range():
    layer = conv(3)
    bits = torch.tensor([2, 3, 4] * 4)
    layer.weight_quant.set_channel_bits(bits)
    nearest, scale = layer.integer_weight()
    learned(layer, smooth_activations(64, 8, 10, seed=1))
    codes, kept = layer.integer_weight()
    assert torch.equal(kept, scale) and (codes - nearest).abs().max() <= 1
    top = (2 ** (bits - 1) - 1).view(-1, 1, 1, 1)
    assert bool((codes.abs() <= top).all())


def test_it_lowers_the_layer_output_error_against_nearest_rounding():
    layer = conv(3)
    x = smooth_activations(128, 8, 12, seed=2)
    with torch.no_grad():
        target = F.conv2d(x, layer.weight, layer.bias, padding=1)
    settings = adaround.Settings(iterations=150, images=128, batch_size=32, regularization=0.01)
    result = adaround.round_layer(layer, x, target, settings)
    assert result.learned_error < 0.7 * result.nearest_error
    with torch.no_grad():  # the stored weights compute what was measured
        stored = float(((layer(x) - target) ** 2).sum(1).mean())
    assert stored == pytest.approx(result.learned_error, rel=1e-4)


def test_the_reconstruction_computes_the_layer_s_forward():
    torch.manual_seed(0)
    pooled = QuantConv2d(
        4, 6, 3, wbits=3, abits=2, wquant="maxabs", aquant="hwgq", input_pool=nn.AvgPool2d(2)
    )
    classifier = QuantLinear(6, 5, wbits=3, abits=2, wquant="maxabs", aquant="hwgq")
    classifier.pool_input = True
    for layer, x in ((pooled, torch.randn(2, 4, 10, 10)), (classifier, torch.randn(2, 6, 4, 4))):
        with torch.no_grad():
            inputs, bias = adaround.layer_input(layer, x)
            out = layer.weighted(inputs, layer.quant_weight(), bias)
            assert torch.equal(out, layer(x))


class DefinedOutOfOrder(nn.Module):
    """Its layers defined in the opposite order to the one it runs them in."""

    def __init__(self):
        super().__init__()
        self.second = conv(3)
        self.first = QuantConv2d(
            8, 8, 3, padding=1, wbits=3, abits=32, wquant="maxabs", aquant="clipped"
        )

    def forward(self, x):
        return self.second(self.first(x).relu())


def test_layers_are_rounded_in_the_order_the_network_runs_them():
    model = DefinedOutOfOrder()
    float_net = float_copy(model)
    settings = adaround.Settings(iterations=5, images=8, batch_size=4, regularization=0.01)
    results = adaround.round_network(model, float_net, smooth_activations(8, 8, 6, 3), settings)
    assert list(results) == ["first", "second"]  # second's input is first's rounded output


def test_nearest_rounding_leaves_the_network_as_it_is(ptq_cfg):
    cfg = ptq_cfg("arch=uniform", "model.weights=weights.pt")
    layer = conv(3)
    before = layer.weight.detach().clone()
    parsed = check_ptq(cfg).rounding
    assert rounding.apply(parsed, layer, None, None, 0) == {"rounding": "nearest"}
    assert torch.equal(layer.weight, before)
    assert parsed.correction == cfg.ptq.bias_correction == "mean"


def test_the_regularizer_waits_then_anneals():
    assert adaround.beta_at(0, 100) is None and adaround.beta_at(19, 100) is None
    assert adaround.beta_at(20, 100) == adaround.BETA_START
    assert adaround.beta_at(99, 100) == pytest.approx(adaround.BETA_END, abs=0.3)
    v = torch.tensor([-10.0, 0.0, 10.0])
    assert torch.equal(adaround.rectified_sigmoid(v), torch.tensor([0.0, 0.5, 1.0]))


@pytest.mark.parametrize("reconstruction", ["layer", "block"])
def test_ptq_with_adaround_exports_bit_exactly(ptq_cfg, float_weights, reconstruction):  # noqa: F811
    cfg = ptq_cfg(
        f"model.weights={float_weights}",
        "arch=uniform",
        "wbits=2",  # codes -1, 0, 1: every top code stored at its channel's max |w|
        "abits=4",
        "ptq.rounding=adaround",
        f"ptq.reconstruction={reconstruction}",  # block: the clips are learned too
        *QUICK_ADAROUND,
        *QUICK,
    )
    result = ptq(cfg)
    stored = json.loads(open(f"{cfg.output_dir}/metrics.json").read())
    assert stored == result
    assert stored["rounding"] == "adaround" and stored["rounding_time_s"] > 0
    assert stored["reconstruction"] == reconstruction
    assert stored["bias_correction"] == "none"  # replaced by the learned rounding
    assert stored["prediction_agreement"] == 1.0 and stored["qdq_agreement"] == 1.0
    assert stored["int8_agreement"] == 1.0  # model_int8.onnx too


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["ptq.rounding=banana"], "ptq.rounding=banana: choose from nearest, adaround"),
        (
            ["ptq.rounding=adaround", "quant=edmips"],
            r"ptq.rounding=adaround: quant's weight quantizer \(gauss_int8\) is not max-abs",
        ),
        (
            ["ptq.rounding=adaround", "ptq.bias_correction=mean_var"],
            "ptq.bias_correction=mean_var: ptq.rounding=adaround stores the learned weights",
        ),
        (
            ["ptq.rounding=adaround", "ptq.adaround.iterations=0"],
            "ptq.adaround.iterations=0: a whole number, at least 1",
        ),
        (
            ["ptq.rounding=adaround", "ptq.reconstruction=banana"],
            "ptq.reconstruction=banana: choose from layer, block",
        ),
        (
            ["ptq.reconstruction=layer"],
            "ptq.reconstruction=layer: only a learned rounding reconstructs; add ptq.rounding",
        ),
        (
            ["ptq.rounding=adaround", "ptq.adaround.drop=1"],
            "ptq.adaround.drop=1: a probability, at least 0 and below 1",
        ),
    ],
)
def test_bad_rounding_settings_are_refused_before_anything_is_written(
    ptq_cfg,
    tmp_path,
    overrides,
    message,
):
    cfg = ptq_cfg("arch=uniform", "model.weights=weights.pt", *overrides)
    with pytest.raises(ValueError, match=f"^{message}") as refused:
        ptq(cfg)
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "ptq").exists()
