"""Block reconstruction (ptq.reconstruction=block): the network cut into blocks where one tensor
carries everything onward, each block's output error lowered against nearest rounding, codes
within one level of nearest on the calibrated grid, a clip shared with other blocks kept."""

import copy

import torch
from test_adaround import smooth_activations

from edmips.models import create_model
from edmips.nn import default_searched, to_fixed
from edmips.nn.convert import first_and_last
from edmips.ptq import adaround, float_copy, method, stats
from edmips.ptq.adaround import Settings
from edmips.ptq.reconstruct import blocks, graph_module, reconstruct_network
from edmips.quant.registry import Family

PTQ = Family("clipped", "maxabs", "clipped_signed")  # conf/quant/ptq.yaml


def calibrated(name: str, wbits: int, abits: int, images: torch.Tensor):
    """`name` with random weights in the post-training family, its clips set by ACIQ-mix."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    searched = default_searched(model, True, True)
    to_fixed(model, {n: (wbits, abits) for n in searched}, PTQ)
    to_fixed(model, {n: (8, 8) for n in first_and_last(model) if n not in searched}, PTQ)
    stats.gather(model, [(x,) for x in images.split(16)], len(images))
    stats.finish(model, method("aciq_mix"))
    return model


def images(count: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def block_layers(model) -> list[list[str]]:
    gm = graph_module(model, images(1))
    found = blocks(gm, adaround.learnable(model))
    return [[n.target for n in b.nodes if n.target in adaround.learnable(model)] for b in found]


def test_residual_blocks_are_whole_and_a_chain_is_cut_at_each_layer():
    model = calibrated("resnet_tiny", 3, 3, images(16))
    assert block_layers(model) == [
        ["conv1"],
        ["stages.0.0.conv1", "stages.0.0.conv2"],
        ["stages.1.0.conv1", "stages.1.0.conv2", "stages.1.0.downsample"],
        ["fc"],
    ]


def test_a_torchvision_network_is_cut_the_same_way():
    model = calibrated("tv_resnet18", 4, 4, images(8))
    found = block_layers(model)
    assert found[0] == ["body.conv1"] and found[-1] == ["body.fc"]
    assert found[1] == ["body.layer1.0.conv1", "body.layer1.0.conv2"]
    assert found[3] == ["body.layer2.0.conv1", "body.layer2.0.conv2", "body.layer2.0.downsample.0"]
    assert len(found) == 10  # the stem, eight residual blocks, the classifier


def test_each_block_s_output_error_falls_and_codes_stay_within_one_level():
    calibration = smooth_activations(48, 3, 32, seed=1).clamp(0, 1)
    model = calibrated("resnet_tiny", 2, 3, calibration)
    nearest_model, float_net = copy.deepcopy(model), float_copy(model)
    layers = adaround.learnable(model)
    before = {name: layer.integer_weight() for name, layer in layers.items()}
    clips = {n: float(q.alpha) for n, q in model.named_modules() if hasattr(q, "alpha")}
    settings = Settings(40, 48, 16, regularization=0.01, drop=0.5)
    results = reconstruct_network(model, float_net, calibration, settings)
    assert list(results) == ["conv1", "stages.0.0.conv1", "stages.1.0.conv1", "fc"]
    for result in results.values():  # a block learned, or kept as it was where nothing was gained
        assert result.learned_error < result.nearest_error or result.changed == 0
    assert results["stages.0.0.conv1"].learned_error < results["stages.0.0.conv1"].nearest_error
    with torch.no_grad():  # and the network's output comes closer to the float network's
        target = float_net(calibration)
        errors = [
            float(((m(calibration) - target) ** 2).sum(1).mean()) for m in (nearest_model, model)
        ]
    assert errors[1] < 0.9 * errors[0]
    assert sum(r.changed for r in results.values()) > 0
    for name, layer in layers.items():
        nearest, scale = before[name]
        codes, kept = layer.integer_weight()
        assert torch.equal(kept, scale)  # the export's grid is the calibration's
        assert (codes - nearest).abs().max() <= 1
    learned = {n: float(q.alpha) for n, q in model.named_modules() if hasattr(q, "alpha")}
    assert learned["stages.0.quant"] == clips["stages.0.quant"]  # shared by blocks: kept
    assert learned["stages.0.0.conv2.input_quant"] != clips["stages.0.0.conv2.input_quant"]
    assert "stages.0.0.conv2.input_quant" in results["stages.0.0.conv1"].clips
