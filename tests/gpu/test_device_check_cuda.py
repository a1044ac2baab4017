"""On a GPU, the compiled Triton kernels pass the start-of-run check (edmips.core.device_check)
at every bit-width and candidate set the quantizers take, in float32 and bfloat16: the check's
tolerances hold the real kernels, so a GPU run keeps them."""

import pytest
import torch

from edmips.core import device_check
from edmips.core.device_check import NetworkBits
from edmips.quant import GAUSS_STEPS, HWGQ_STEPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_the_fused_kernels_pass_the_check():
    bits = NetworkBits(
        tuple(sorted(HWGQ_STEPS)),
        ((2, 3, 4), tuple(sorted(HWGQ_STEPS))),
        ((1, 2, 3, 4), (2, 4), tuple(sorted(GAUSS_STEPS))),
    )
    dtypes = (torch.float32, torch.bfloat16)
    assert device_check.check_kernels(bits, torch.device("cuda"), dtypes) is None
