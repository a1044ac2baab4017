"""The int8sim family (edmips.quant.pow2): a conv, its batch norm and the next quantizer compute,
in the network's own forward, exactly what onnxruntime's QLinearConv computes on the same
integers (uint8 codes, int8 weights, an int32 bias, w_scale = M, rounding half to even and
saturation), on random inputs and on boundary cases: products on exact halves, saturation, and
channels whose batch-norm scale is negative. The family searches like every other."""

import numpy as np
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edmips.export import reference_copy
from edmips.models import create_model
from edmips.nn import default_searched, to_fixed, to_search
from edmips.nn.convert import first_and_last
from edmips.nn.layers import QuantConv2d
from edmips.quant import Quantizer, registry
from edmips.quant.primitives import HWGQ_STEPS
from edmips.quant.registry import Family

INT8SIM = Family("pow2_relu", "maxabs_f32", "pow2")


def test_the_step_is_the_power_of_two_nearest_the_range_s_in_any_precision():
    q = registry.get("pow2_relu")(4)
    for top, step in (
        (0.3, 2.0**-6),
        (1.0, 2.0**-4),
        (15.0, 1.0),
        (15 * 2**-0.49, 1.0),
        (15 * 2**-0.51, 0.5),
        (2.0**-7 * 15, 2.0**-7),
    ):
        q.running_max.fill_(top)
        assert float(q.unit()) == step
        assert float(q.double().unit()) == step


def _qlinear_conv(codes, weight, bias, multiplier, stride, padding) -> np.ndarray:
    """QLinearConv with x_scale = y_scale = 1 and w_scale = M, under onnxruntime."""
    x = helper.make_tensor_value_info("x", TensorProto.UINT8, list(codes.shape))
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, None)
    consts = {
        "one": np.float32(1.0),
        "zero": np.uint8(0),
        "w": weight.astype(np.int8),
        "m": multiplier.astype(np.float32),
        "wz": np.zeros(len(multiplier), np.int8),
        "b": bias.astype(np.int32),
    }
    inputs = ["x", "one", "zero", "w", "m", "wz", "one", "zero", "b"]
    conv = helper.make_node("QLinearConv", inputs, ["y"], strides=[stride] * 2, pads=[padding] * 4)
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    model = helper.make_model(
        helper.make_graph([conv], "q", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    sess = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"x": codes})[0]


class _ConvBn(nn.Module):
    """quantizer -> conv -> batch norm -> quantizer, in the family."""

    def __init__(self, wbits, abits, out_bits, cin=6, cout=8, k=3, stride=1):
        super().__init__()
        self.conv = QuantConv2d(
            cin,
            cout,
            k,
            stride=stride,
            padding=k // 2,
            bias=False,
            wbits=wbits,
            abits=abits,
            wquant="maxabs_f32",
            aquant="pow2_relu",
        )
        self.bn = nn.BatchNorm2d(cout)
        self.out = registry.get("pow2_relu")(out_bits)

    def forward(self, x):
        return self.out(self.bn(self.conv(x)))


def _check(net: _ConvBn, x: torch.Tensor) -> int:
    """The family's forward (float64, batch norm absorbed) against QLinearConv on its integers;
    the number of outputs that saturate."""
    reference = reference_copy(net)
    conv, out = reference.conv, reference.out
    expected = (reference(x.double()) / out.unit().double()).round().long()
    codes = conv.input_quant.codes(x.double()).to(torch.uint8)
    weight, scale = conv.integer_weight()
    unit = conv.input_quant.unit().double() * scale.flatten()
    bias = torch.round(conv.bias.detach() / unit)
    assert torch.equal(bias * unit, conv.quant_bias())  # the bias is on the accumulator's grid
    multiplier = (unit / out.unit().double()).numpy()
    assert np.array_equal(multiplier.astype(np.float32), multiplier)  # a float32 number
    got = _qlinear_conv(
        codes.numpy(), weight.numpy(), bias.numpy(), multiplier, conv.stride[0], conv.padding[0]
    )
    got = np.minimum(got, out.qmax)  # the Clip after a conv that saturates at 255
    assert np.array_equal(got, expected.numpy())
    return int((expected == out.qmax).sum())


def _calibrated(net: nn.Module, x: torch.Tensor, bn_scale=(0.5, 1.5)) -> nn.Module:
    with torch.no_grad():
        net.bn.weight.uniform_(*bn_scale)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.train()
        for _ in range(3):
            net(x)
    return net.eval()


@pytest.mark.parametrize("bits", [(2, 2, 2), (4, 3, 4), (8, 8, 8), (5, 4, 6)])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_forward_is_qlinearconv_on_random_inputs(bits, seed):
    torch.manual_seed(seed)
    x = torch.randn(4, 6, 9, 9) * 2
    net = _calibrated(_ConvBn(*bits, stride=1 + seed), x)
    _check(net, x)


def test_channels_with_a_negative_batch_norm_scale_and_saturation():
    torch.manual_seed(3)
    x = torch.randn(4, 6, 8, 8)
    net = _calibrated(_ConvBn(4, 4, 4), x, bn_scale=(-1.5, 1.5))
    assert (net.bn.weight < 0).sum() >= 2
    with torch.no_grad():
        net.out.running_max.mul_(1 / 16)  # a range far too small: many outputs saturate
    assert _check(net, x) > 100


def test_products_on_exact_halves_round_to_even():
    torch.manual_seed(4)
    net = _ConvBn(2, 4, 8, cin=4, cout=3, k=1)
    with torch.no_grad():  # 2-bit weights +-1 (scale 1), no batch norm to speak of
        net.conv.weight.copy_(torch.randint(0, 2, net.conv.weight.shape) * 2.0 - 1)
        net.bn.running_mean.zero_()
        net.bn.running_var.fill_(1 - net.bn.eps)
        net.bn.weight.fill_(1.0)
        net.bn.bias.zero_()
    x = torch.rand(4, 4, 6, 6) * 4
    with torch.no_grad():
        net.conv.input_quant.running_max.fill_(15 * 0.25)  # input step 1/4
        net.out.running_max.fill_(255 * 0.5)  # output step 1/2: M = 1/2, odd sums are halves
        net.conv.input_quant.initialized.fill_(True)
        net.out.initialized.fill_(True)
    net.eval()
    reference = reference_copy(net)
    acc = reference.conv(x.double()) / 0.25
    halves = ((acc / 2) % 1 == 0.5).sum()
    assert halves > 50
    _check(net, x)


def test_int8sim_searches_and_fixes_like_every_family():
    torch.manual_seed(0)
    model = create_model("resnet_tiny", num_classes=10)
    names = default_searched(model)
    to_search(model, names, (2, 4, 8), (2, 4), family=INT8SIM)
    model(torch.rand(4, 3, 16, 16)).square().mean().backward()
    layer = model.get_submodule(names[0])
    assert {type(q).name for q in layer.input_quants} == {"pow2_relu"}
    assert layer.alpha_w.grad.abs().sum() > 0 and layer.alpha_a.grad.abs().sum() > 0
    ends = dict.fromkeys(first_and_last(model), (8, 8))
    to_fixed(model, {**dict.fromkeys(names, (4, 2)), **ends}, INT8SIM)
    kinds = {type(q).name for q in model.modules() if isinstance(q, Quantizer)}
    assert kinds == {"image", "pow2_relu", "pow2", "maxabs_f32"}


def test_the_image_s_codes_step_by_a_power_of_two_in_an_int8sim_network_only():
    """The first conv's unit, image step x float32 weight scale, is then a float32 number:
    its requantization is QLinearConv's like every other conv's; its weights are scaled by the
    inverse change, so that a float network's weights compute what they did. Other families
    keep the normalization's own scale, 1 / (255 std)."""
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    std_scale = model.input_quant.scale
    first = first_and_last(model)[0]
    to_fixed(model, {first: (8, 8)}, registry.EDMIPS)
    assert model.input_quant.scale == std_scale
    x = model.input_quant(torch.rand(2, 3, 32, 32))
    weight = model.get_submodule(first).weight.detach().clone()
    to_fixed(model, {first: (8, 8)}, INT8SIM)
    scale = model.input_quant.scale
    assert scale != std_scale and 2 ** round(np.log2(scale)) == scale
    assert 2**-0.5 <= scale / std_scale <= 2**0.5
    # The first conv's weights take up the change: on the same codes it computes what it did.
    scaled = model.get_submodule(first).weight.detach()
    assert torch.equal(scaled, weight * (std_scale / scale))
    after = F.conv2d(x * (scale / std_scale), scaled, padding=1)
    assert torch.allclose(after, F.conv2d(x, weight, padding=1), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", range(1, 9))
def test_hwgq_s_int8_step_is_a_python_float_that_a_pool_divides_in_float64(bits):
    # tv_resnet18's classifier reads a 7 x 7 average pool: its bias grid, step / 49 x the
    # weights' scale, must be float64's, as the export computes it (a float32 step made it
    # float32's, and the export refused the logits as off their grid).
    step = registry.get("hwgq_int8")(bits).unit()
    assert isinstance(step, float)
    assert step == 2.0 ** round(np.log2(HWGQ_STEPS[bits]))
    assert step / 49 == np.float64(step) / np.float64(49)
