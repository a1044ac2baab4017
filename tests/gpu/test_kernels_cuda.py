"""On a GPU, the compiled Triton kernels compute what the PyTorch reference computes on the CPU."""

import pytest
import torch

from edmips.quant import StreamQuant, hwgq, mixed_hwgq, mixed_weight

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _both(t):
    """A leaf on the CPU (the reference) and its copy on the GPU (the kernels)."""
    return t.clone().requires_grad_(True), t.cuda().requires_grad_(True)


def _check(fn, inputs, grad, tol):
    cpu, gpu = zip(*(_both(t) for t in inputs))
    out_cpu, out_gpu = fn(*cpu), fn(*gpu)
    assert torch.allclose(out_gpu.cpu().float(), out_cpu.float(), rtol=tol, atol=tol)
    out_cpu.backward(grad)
    out_gpu.backward(grad.cuda())
    for a, b in zip(cpu, gpu):
        assert torch.allclose(b.grad.cpu().float(), a.grad.float(), rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_activation_kernels_match_reference(dtype, channels_last):
    torch.manual_seed(0)
    x = (torch.randn(8, 13, 9, 7) * 1.5).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad = torch.randn(x.shape).to(dtype)
    alpha = torch.randn(3)
    _check(lambda x, a: mixed_hwgq(x, torch.softmax(a, 0), (2, 3, 4)), (x, alpha), grad, TOL[dtype])
    _check(lambda x: hwgq(x, 2), (x,), grad, TOL[dtype])
    # a fresh quantizer per device: its first batch sets its range
    _check(lambda x: StreamQuant(8).to(x.device)(x), (x,), grad, TOL[dtype])


@pytest.mark.parametrize("shape", [(64, 32, 3, 3), (10, 7, 1, 1), (1000, 512)])
def test_mixed_weight_kernel_matches_reference(shape):
    torch.manual_seed(0)
    w, grad = torch.randn(shape) * 0.05, torch.randn(shape)
    alpha = torch.randn(4)
    fn = lambda w, a: mixed_weight(w, torch.softmax(a, 0), (1, 2, 3, 4))  # noqa: E731
    _check(fn, (w, alpha), grad, 1e-5)
