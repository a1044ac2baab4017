"""The post-training quantizers: codes times the unit are the forward, narrow ranges, a clip
set by calibration, and bit-exact export through the integer lowering."""

import pytest
import torch
from conftest import ROOT
from omegaconf import OmegaConf
from torch import nn

from edmips.export import image_codes, lower, reference_copy, run
from edmips.nn import quantize, to_fixed
from edmips.programs.checks import family
from edmips.ptq import calibrate
from edmips.quant import Family, calibration
from edmips.quant.clipped import ClippedReLU, ClippedSigned
from edmips.quant.maxabs import MaxAbsWeight

PTQ = Family(activation="clipped", weight="maxabs", signed="clipped_signed")


def _calibrated(cls, bits, x, alpha=None):
    q = cls(bits)
    with calibration(q):
        assert torch.equal(q(x), q.float_forward(x))  # calibration sees the float tensor
    q.finish_calibration(lambda stats, b, signed: alpha or stats.max_abs)
    return q


@pytest.mark.parametrize("cls", [ClippedReLU, ClippedSigned])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_clipped_codes_times_unit_are_the_forward(cls, bits):
    torch.manual_seed(0)
    x = torch.randn(4096) * 3
    q = _calibrated(cls, bits, x, alpha=2.5)
    codes = q.codes(x)
    assert torch.equal(codes * q.unit(), q(x))
    assert codes.min() == q.lowest and codes.max() == q.lowest + q.num_levels - 1
    assert float(q.unit()) == pytest.approx(2.5 / q.qmax)
    if q.signed:  # narrow range: no code -2^(b-1)
        assert q.lowest == -(2 ** (bits - 1) - 1)
    else:
        assert q.lowest == 0 and q.num_levels == 2**bits


def test_the_min_max_clip_is_the_largest_value_seen():
    q = _calibrated(ClippedSigned, 4, torch.tensor([-3.0, 0.5, 2.0]))
    assert float(q.alpha) == 3.0 and q.is_calibrated() and q.statistics is None
    assert not ClippedSigned(4).is_calibrated()


def test_finishing_without_data_is_refused():
    with pytest.raises(ValueError, match="no data seen"):
        ClippedReLU(4).finish_calibration(lambda *a: 1.0)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [True, False])
def test_max_abs_weights_are_codes_times_scale_in_a_narrow_range(bits, per_channel):
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3)
    q = MaxAbsWeight(bits, per_channel)
    codes, scale = q.integer(w)
    assert torch.equal(codes * scale, q(w))
    top = 2 ** (bits - 1) - 1
    assert codes.abs().max() == top == q.max_code and codes.min() >= -top
    per = codes.flatten(1).abs().amax(1) if per_channel else codes.abs().amax()
    assert (per == top).all()  # the largest weight of each channel is a level, unclipped
    assert torch.equal(q.scale(w, 2.0), 2.0 * scale.flatten())


def test_the_ptq_family_is_its_config():
    quant = OmegaConf.load(ROOT / "conf" / "quant" / "ptq.yaml")
    assert family(OmegaConf.create({"quant": quant})) == PTQ
    PTQ.check()


class _Signed(nn.Module):
    """A linear bottleneck: the second conv's input is signed (the signed clipped quantizer)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.out = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.out(self.mid(self.stem(x))).flatten(1))


@pytest.mark.parametrize("clip", ["minmax", "aciq_mix"])
def test_a_calibrated_network_exports_bit_exactly(clip):
    torch.manual_seed(0)
    model = quantize(_Signed(), family=PTQ)
    model.eval()(torch.rand(2, 3, 16, 16))
    to_fixed(model, {"stem.0": (8, 8), "mid.0": (4, 4), "out.0": (4, 4), "fc": (8, 8)}, PTQ)
    kinds = {type(q) for q in model.modules()}
    assert {ClippedReLU, ClippedSigned, MaxAbsWeight} <= kinds
    loader = [(torch.rand(8, 3, 16, 16), torch.zeros(8)) for _ in range(2)]
    clips = calibrate(model, loader, 12, clip)
    assert len(clips) >= 3 and all(a > 0 for a in clips.values())
    graph = lower(model, (3, 16, 16))
    images = torch.randint(0, 256, (32, 3, 16, 16)) / 255  # what 8-bit image codes can say
    with torch.no_grad():
        reference = reference_copy(model)(images.double())
    logits = run(graph, image_codes(images))
    unit = torch.as_tensor(graph.node(graph.output).attrs["scale"], dtype=torch.float64)
    assert torch.allclose(logits * unit, reference, rtol=1e-9, atol=1e-9)
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() == 1.0
