"""The Triton kernels compile for an H100 (sm_90) on a machine without a GPU, to PTX whose
arithmetic is the reference's: what the interpreter (tests/quant/test_kernels.py) cannot check."""

import pytest


def _signatures(dtype):
    """Each kernel with the argument types its launcher passes (activations in dtype)."""
    act, f32 = f"*{dtype}", "*fp32"
    return {
        "_mixed_hwgq_fwd": ([act, act, f32, f32, "i32"], {"N": 3, "BLOCK": 1024}),
        "_mixed_hwgq_bwd": (
            [act, act, act, f32, f32, f32, "i32"],
            {"N": 3, "PROB_GRAD": True, "BLOCK": 1024},
        ),
        "_stream_fwd": ([act, act, act, "fp32", "i32"], {"BLOCK": 1024}),
        "_stream_bwd": ([act, act, act, act, "fp32", "i32"], {"BLOCK": 1024}),
        "_mixed_weight_fwd": ([f32, f32, f32, f32, "i32"], {"N": 4, "BLOCK": 8192}),
        "_mixed_weight_bwd": ([f32, f32, f32, f32, "i32"], {"N": 4, "BLOCK": 8192}),
    }


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_kernels_compile_for_an_h100_with_exact_arithmetic(dtype):
    """The PTX keeps the round-half-even addition and divides only with IEEE rounding."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import edmips.quant.kernels as compiled

    for name, (types, constexprs) in _signatures(dtype).items():
        fn = getattr(compiled, name)
        names = fn.arg_names
        signature = dict(zip(names, types)) | {c: "constexpr" for c in constexprs}
        source = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
        ptx = triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        assert "div.full" not in ptx and "div.approx" not in ptx, name
        assert ("0f4B400000" in ptx and "0fCB400000" in ptx) or "bwd" in name, name
