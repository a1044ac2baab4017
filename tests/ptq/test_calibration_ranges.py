"""Post-training calibration sees the float network: every activation quantizer, those outside
the conv/linear layers included (the stem's, the residual streams'), is the family's clipped
quantizer, and its min-max clip is the largest |x| of every tensor that meets at it."""

import torch

from edmips.models import create_model
from edmips.nn import to_fixed
from edmips.nn.convert import quantizable_names
from edmips.ptq import method, stats
from edmips.quant import HWGQ, StreamQuant
from edmips.quant.clipped import ClippedReLU, ClippedSigned
from edmips.quant.registry import EDMIPS, Family

PTQ = Family("clipped", "maxabs", "clipped_signed")


def _model():
    torch.manual_seed(0)
    return create_model("resnet_tiny", num_classes=10)


def test_a_family_replaces_the_quantizers_outside_the_layers():
    model = _model()
    to_fixed(model, dict.fromkeys(quantizable_names(model), (4, 4)), PTQ)
    assert isinstance(model.act1, ClippedReLU)
    assert all(isinstance(stage.quant, ClippedSigned) for stage in model.stages)
    assert not any(isinstance(m, (HWGQ, StreamQuant)) for m in model.modules())


def test_a_family_that_has_them_keeps_them_and_their_state():
    model = _model()
    streams = [stage.quant for stage in model.stages]
    streams[0].running_max.fill_(3.5)
    to_fixed(model, {}, EDMIPS)
    assert [stage.quant for stage in model.stages] == streams
    assert float(model.stages[0].quant.running_max) == 3.5


def test_a_stream_clip_is_the_largest_value_of_every_tensor_that_meets_there():
    model = _model()
    to_fixed(model, {}, PTQ)
    seen = {id(stage.quant): 0.0 for stage in model.stages}

    def record(quantizer, inputs):
        seen[id(quantizer)] = max(seen[id(quantizer)], float(inputs[0].abs().max()))

    hooks = [stage.quant.register_forward_pre_hook(record) for stage in model.stages]
    images = torch.rand(3, 8, 3, 32, 32)
    stats.gather(model, [(x,) for x in images], 24)
    for h in hooks:
        h.remove()
    clips = stats.finish(model, method("minmax"))
    for i, stage in enumerate(model.stages):
        assert clips[f"stages.{i}.quant"] == seen[id(stage.quant)] > 0
