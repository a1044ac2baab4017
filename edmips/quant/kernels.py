"""Fused Triton kernels of the quantizers, for CUDA tensors: one launch forward, one backward.

Each kernel computes the arithmetic that the PyTorch reference defines (`hwgq_codes`,
`weight_levels`, `stream_codes`), in float32 registers, rounding the scaled input to the input's
dtype first as the reference's tensor arithmetic does; only the sums over candidates and the
reductions differ from it by float rounding. An elementwise kernel reads a tensor as flat
memory, so any dense layout (contiguous, channels_last) works; a gradient of another layout
is first copied into the input's. The backward kernels that produce selector gradients write
one partial sum per block and candidate, summed by one small torch reduction.

One module although it is over 300 lines: the kernels share the jit helpers (`_rint`,
`_rounded`, `_sum`) and the step tables, and apart they would each need the whole set.
"""

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from edmips.quant.primitives import GAUSS_STEPS, HWGQ_STEPS, hwgq_clip

BLOCK = 1024  # elements per program of the elementwise kernels
MAX_ROW = 16384  # largest output channel (in elements) the weight kernels hold in registers


@triton.jit
def _rint(t):
    # Round half to even, for |t| < 2^22 (every level here): adding 1.5 * 2^23 leaves no
    # fraction bits, so the float32 addition itself rounds. (libdevice.rint has no
    # counterpart in Triton's interpreter, which the tests run.)
    return (t + 12582912.0) - 12582912.0


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x):
    # tl.reduce with an own combine rather than tl.sum, and tl.full rather than tl.zeros: the
    # kernels use only Triton's builtins, which its interpreter runs even when triton was
    # imported before TRITON_INTERPRET was set (as in the test suite).
    return tl.reduce(x, 0, _add)


@triton.jit
def _rounded(v, DTYPE: tl.constexpr):
    # v (float32) rounded to nearest even in DTYPE, kept as float32. bfloat16 by its bits: the
    # interpreter's float32 -> bfloat16 cast truncates, the GPU's rounds.
    if DTYPE == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.to(tl.float32, bitcast=True)
    elif DTYPE == tl.float16:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v


@triton.jit
def _store(ptr, v, mask):
    ty = ptr.dtype.element_ty
    tl.store(ptr, _rounded(v, ty).to(ty), mask=mask)


@triton.jit
def _hwgq_level(xf, inv, top, X_DTYPE: tl.constexpr):
    # hwgq_codes: round(clamp(x * (1 / step), 0, 2^b - 1)), the product rounded to x's dtype.
    t = _rounded(xf * inv, X_DTYPE)
    return _rint(tl.minimum(tl.maximum(t, 0.0), top))


@triton.jit
def _mixed_hwgq_fwd(x_ptr, out_ptr, probs_ptr, table_ptr, n, N: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    acc = tl.full([BLOCK], 0.0, tl.float32)
    for j in tl.static_range(N):
        step = tl.load(table_ptr + 4 * j)
        inv = tl.load(table_ptr + 4 * j + 1)
        top = tl.load(table_ptr + 4 * j + 2)
        p = tl.load(probs_ptr + j).to(tl.float32)
        acc += _hwgq_level(xf, inv, top, x.dtype) * (p * step)
    _store(out_ptr + offs, acc, mask)


@triton.jit
def _mixed_hwgq_bwd(
    x_ptr,
    grad_ptr,
    grad_x_ptr,
    partial_ptr,
    probs_ptr,
    table_ptr,
    n,
    N: tl.constexpr,
    PROB_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    xf = x.to(tl.float32)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    passes = tl.full([BLOCK], 0.0, tl.float32)
    for j in tl.static_range(N):
        clip = tl.load(table_ptr + 4 * j + 3)
        p = tl.load(probs_ptr + j).to(tl.float32)
        passes += tl.where((xf >= 0.0) & (xf <= clip), p, 0.0)
        if PROB_GRAD:
            inv = tl.load(table_ptr + 4 * j + 1)
            top = tl.load(table_ptr + 4 * j + 2)
            level = _hwgq_level(xf, inv, top, x.dtype)
            tl.store(partial_ptr + pid * N + j, _sum(g * level))
    _store(grad_x_ptr + offs, g * passes, mask)


@triton.jit
def _stream_fwd(x_ptr, out_ptr, scale_ptr, qmax, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    scale = tl.load(scale_ptr).to(tl.float32)
    # stream_codes: round(clamp(x / scale, -qmax, qmax)), the quotient rounded to x's dtype.
    t = _rounded(tl.div_rn(x.to(tl.float32), scale), x.dtype)
    level = _rint(tl.minimum(tl.maximum(t, -qmax), qmax))
    _store(out_ptr + offs, level * scale, mask)


@triton.jit
def _stream_bwd(x_ptr, grad_ptr, grad_x_ptr, scale_ptr, qmax, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.load(scale_ptr).to(tl.float32)
    t = _rounded(tl.div_rn(x.to(tl.float32), scale), x.dtype)
    out = tl.where(tl.abs(t) <= qmax, g, 0.0)
    _store(grad_x_ptr + offs, out, mask)


@triton.jit
def _row_std(w, mask, K):
    # Unbiased standard deviation of one output channel, two passes over registers.
    # div_rn and sqrt_rn: IEEE-rounded, as torch computes (Triton's `/` is an approximation).
    n = K.to(tl.float32)
    mean = tl.div_rn(_sum(w), n)
    d = tl.where(mask, w - mean, 0.0)
    return tl.maximum(tl.sqrt_rn(tl.div_rn(_sum(d * d), n - 1.0)), 1e-12)


@triton.jit
def _weight_value(w, std, table_ptr, j):
    # weight_levels * step: clamp(round(w / step + 1/2), lo, hi) - 1/2, with step = g_b * std.
    step = tl.load(table_ptr + 3 * j) * std
    lo = tl.load(table_ptr + 3 * j + 1)
    hi = tl.load(table_ptr + 3 * j + 2)
    u = tl.minimum(tl.maximum(tl.div_rn(w, step) + 0.5, lo), hi)
    return (_rint(u) - 0.5) * step


@triton.jit
def _mixed_weight_fwd(
    w_ptr, out_ptr, probs_ptr, table_ptr, K, N: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    w = tl.load(w_ptr + row * K + offs, mask=mask, other=0.0).to(tl.float32)
    std = _row_std(w, mask, K)
    acc = tl.full([BLOCK], 0.0, tl.float32)
    for j in tl.static_range(N):
        acc += _weight_value(w, std, table_ptr, j) * tl.load(probs_ptr + j).to(tl.float32)
    _store(out_ptr + row * K + offs, acc, mask)


@triton.jit
def _mixed_weight_bwd(
    w_ptr, grad_ptr, partial_ptr, table_ptr, K, N: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < K
    w = tl.load(w_ptr + row * K + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(grad_ptr + row * K + offs, mask=mask, other=0.0).to(tl.float32)
    std = _row_std(w, mask, K)
    for j in tl.static_range(N):
        q = tl.where(mask, _weight_value(w, std, table_ptr, j), 0.0)
        tl.store(partial_ptr + row * N + j, _sum(g * q))


# -- launchers ----------------------------------------------------------------------------------
def _on_device(values, device) -> Tensor:
    # Filled on the device (no host copy, so no synchronisation), once per key thanks to caching.
    return torch.stack(
        [torch.full((), float(v), dtype=torch.float32, device=device) for v in values]
    )


@functools.cache
def _hwgq_table(bits: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Per candidate: step, 1 / step, 2^b - 1, and the clip as the reference compares it."""
    rows = []
    for b in bits:
        clip = torch.tensor(hwgq_clip(b), dtype=dtype).item()  # x <= clip compares in x's dtype
        rows += [HWGQ_STEPS[b], 1.0 / HWGQ_STEPS[b], 2**b - 1, clip]
    return _on_device(rows, device).view(len(bits), 4)


@functools.cache
def _weight_table(bits: tuple[int, ...], device: torch.device) -> Tensor:
    """Per candidate: the Gaussian step factor and the bounds of round(w / step + 1/2)."""
    rows = []
    for b in bits:
        rows += [GAUSS_STEPS[b], 1 - 2 ** (b - 1), 2 ** (b - 1)]
    return _on_device(rows, device).view(len(bits), 3)


@functools.cache
def _one(device: torch.device) -> Tensor:
    return _on_device([1.0], device)


def _dense(t: Tensor) -> Tensor:
    """t itself when its memory is one dense block (contiguous or channels_last), else a copy."""
    if t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous()


def _like(grad: Tensor, x: Tensor) -> Tensor:
    """grad laid out in memory as x is, so that flat offsets match."""
    return grad if grad.stride() == x.stride() else torch.empty_like(x).copy_(grad)


def _blocks(n: int) -> tuple[int]:
    return (max(1, triton.cdiv(n, BLOCK)),)  # one program for an empty tensor: a valid grid


def mixed_hwgq_forward(x: Tensor, probs: Tensor, bits: tuple[int, ...]) -> Tensor:
    x = _dense(x)
    out = torch.empty_like(x)
    table = _hwgq_table(bits, x.dtype, x.device)
    _mixed_hwgq_fwd[_blocks(x.numel())](x, out, probs, table, x.numel(), N=len(bits), BLOCK=BLOCK)
    return out


def mixed_hwgq_backward(x: Tensor, grad: Tensor, probs: Tensor, bits: tuple[int, ...]):
    x = _dense(x)
    grad = _like(grad, x)
    grad_x = torch.empty_like(x)
    table = _hwgq_table(bits, x.dtype, x.device)
    grid = _blocks(x.numel())
    partial = torch.empty(grid[0], len(bits), dtype=torch.float32, device=x.device)
    _mixed_hwgq_bwd[grid](
        x, grad, grad_x, partial, probs, table, x.numel(), N=len(bits), PROB_GRAD=True, BLOCK=BLOCK
    )
    return grad_x, (partial.sum(0) * table[:, 0]).to(probs.dtype)


def hwgq_forward(x: Tensor, bits: int) -> Tensor:
    return mixed_hwgq_forward(x, _one(x.device), (bits,))


def hwgq_backward(x: Tensor, grad: Tensor, bits: int) -> Tensor:
    x = _dense(x)
    grad = _like(grad, x)
    grad_x = torch.empty_like(x)
    table = _hwgq_table((bits,), x.dtype, x.device)
    _mixed_hwgq_bwd[_blocks(x.numel())](
        x, grad, grad_x, grad_x, _one(x.device), table, x.numel(), N=1, PROB_GRAD=False, BLOCK=BLOCK
    )
    return grad_x


def stream_forward(x: Tensor, scale: Tensor, qmax: int) -> Tensor:
    x = _dense(x)
    out = torch.empty_like(x)
    _stream_fwd[_blocks(x.numel())](x, out, scale, float(qmax), x.numel(), BLOCK=BLOCK)
    return out


def stream_backward(x: Tensor, grad: Tensor, scale: Tensor, qmax: int) -> Tensor:
    x = _dense(x)
    grad = _like(grad, x)
    grad_x = torch.empty_like(x)
    _stream_bwd[_blocks(x.numel())](x, grad, grad_x, scale, float(qmax), x.numel(), BLOCK=BLOCK)
    return grad_x


def _row_warps(K: int) -> int:
    # More threads for long rows, so that a channel's registers do not spill.
    return 4 if K <= 2048 else 8 if K <= 8192 else 16


def fits_mixed_weight(weight: Tensor) -> bool:
    """Output channels stored one after another, each small enough for one program."""
    row = weight[0].numel() if weight.dim() > 1 else 0
    return 2 <= row <= MAX_ROW and weight.stride(0) == row and _dense(weight) is weight


def mixed_weight_forward(weight: Tensor, probs: Tensor, bits: tuple[int, ...]) -> Tensor:
    out = torch.empty_like(weight)
    K = weight[0].numel()
    _mixed_weight_fwd[(weight.shape[0],)](
        weight,
        out,
        probs,
        _weight_table(bits, weight.device),
        K,
        N=len(bits),
        BLOCK=triton.next_power_of_2(K),
        num_warps=_row_warps(K),
    )
    return out


def mixed_weight_backward(weight: Tensor, grad: Tensor, probs: Tensor, bits: tuple[int, ...]):
    grad = _like(grad, weight)
    K = weight[0].numel()
    partial = torch.empty(weight.shape[0], len(bits), dtype=torch.float32, device=weight.device)
    _mixed_weight_bwd[(weight.shape[0],)](
        weight,
        grad,
        partial,
        _weight_table(bits, weight.device),
        K,
        N=len(bits),
        BLOCK=triton.next_power_of_2(K),
        num_warps=_row_warps(K),
    )
    return partial.sum(0).to(probs.dtype)
