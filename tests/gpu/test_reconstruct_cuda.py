"""On a GPU, ptq.py learns the rounding there, block by block (QDrop on and off), and hands the
network back on the CPU, every code within one level of nearest on the calibrated grid."""

import sys
from pathlib import Path

import pytest
import torch

from edmips.programs.checks import check_ptq
from edmips.ptq import adaround, float_copy, rounding
from edmips.ptq.adaround import Settings
from edmips.ptq.reconstruct import reconstruct_network

sys.path.insert(0, str(Path(__file__).parents[1] / "ptq"))  # test_reconstruct's helpers
from test_reconstruct import calibrated, images  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("drop", [0.0, 0.5])
def test_blocks_reconstruct_on_the_gpu(drop):
    x = images(32)
    model = calibrated("resnet_tiny", 2, 3, x)
    before = {n: layer.integer_weight() for n, layer in adaround.learnable(model).items()}
    cuda = torch.device("cuda")
    float_net = float_copy(model).to(cuda)
    settings = Settings(20, 32, 8, 0.01, drop)
    results = reconstruct_network(model.to(cuda), float_net, x.to(cuda), settings)
    assert all(r.learned_error <= r.nearest_error for r in results.values())
    for name, layer in adaround.learnable(model.cpu()).items():
        codes, scale = layer.integer_weight()
        assert torch.equal(scale, before[name][1]) and (codes - before[name][0]).abs().max() <= 1


def test_ptq_learns_on_the_gpu_and_leaves_the_network_on_the_cpu(ptq_cfg):
    cfg = ptq_cfg("arch=uniform", "model.weights=weights.pt", "ptq.rounding=adaround")
    cfg.ptq.adaround.iterations, cfg.ptq.adaround.images = 10, 16
    model = calibrated("resnet_tiny", 3, 3, images(16))
    loader = [(images(16, seed=2), torch.zeros(16, dtype=torch.long))]
    parsed = check_ptq(cfg).rounding
    assert rounding.apply(parsed, model, float_copy(model), loader, 0)["reconstruction"] == "block"
    assert all(p.device.type == "cpu" for p in model.parameters())
