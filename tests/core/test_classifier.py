"""make_optimizer: the fused optimizer step on a GPU, the configured one elsewhere."""

import functools

import pytest
import torch

from edmips.core.classifier import make_optimizer

SGD = functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)


def test_cpu_parameters_keep_the_configured_optimizer():
    opt = make_optimizer(SGD, [torch.nn.Parameter(torch.randn(3))])
    assert not opt.defaults["fused"] and opt.defaults["momentum"] == 0.9


def test_an_optimizer_without_a_fused_form_is_built_as_configured():
    opt = make_optimizer(
        functools.partial(torch.optim.LBFGS, lr=0.5), [torch.nn.Parameter(torch.randn(3))]
    )
    assert isinstance(opt, torch.optim.LBFGS) and opt.defaults["lr"] == 0.5


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_parameters_get_the_fused_step_unless_configured_otherwise():
    params = [torch.nn.Parameter(torch.randn(3, device="cuda"))]
    assert make_optimizer(SGD, params).defaults["fused"]
    foreach = make_optimizer(functools.partial(SGD, foreach=True), params)
    assert foreach.defaults["foreach"] and not foreach.defaults["fused"]


@pytest.mark.parametrize("compile", [None, "default"])
def test_the_state_dict_holds_the_network_once_compiled_or_not(compile):
    from edmips.core.classifier import Classifier

    module = Classifier(torch.nn.Linear(2, 3), 3, compile=compile)
    assert sorted(module.state_dict()) == ["model.bias", "model.weight"]
    x = torch.randn(4, 2)
    if compile is None:  # (compiling would take seconds: the eager forward is enough here)
        assert torch.equal(module(x), module.model(x))
