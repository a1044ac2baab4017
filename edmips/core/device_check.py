"""The check at the start of a GPU run of the paths no CPU test runs: the fused quantizer kernels
and torch.compile. What fails is turned off, with one warning naming it, and the run goes on.

On a GPU a search or retrain goes, by default, through the fused Triton kernels of the
quantizers (edmips.quant.kernels), a torch.compiled network and bf16 autocast. Before training,
`check_paths` tries them once on the device:

(a) Every kernel entry point, forward and backward, on a small tensor at every bit-width and
    every composite's candidate set the network holds, against the eager PyTorch reference (the
    quantizers' autograd functions on the CPU, which never take the kernels): in float32, and
    in bfloat16 too where the run autocasts. Tolerance (KERNEL_TOLERANCE), element by element:
    |kernel - reference| <= tol * (1 + |reference|), tol 1e-5 in float32 (the kernels compute
    the reference's arithmetic; only the sums over candidates round in another order) and 1e-4
    for the selectors' gradients, which sum the whole tensor in another order; 2e-2 in
    bfloat16, whose outputs carry 8 bits. A kernel that raises or differs by more turns the
    kernels off (edmips.quant.activation.disable_kernels): "running the eager quantizers".
(b) One training step of the network (forward, cross-entropy, backward) on a batch of random
    images of the run's size, compiled with the run's mode against eager, both under the run's
    autocast. Tolerance (STEP_TOLERANCE): the loss within 1e-2 * max(1, |eager loss|), the
    gradients, as one vector over every parameter, within 0.1 of the eager one's norm (5e-2 and
    0.3 under bf16 autocast), and every parameter with an eager gradient has a compiled one.
    Compiled code may round a quantizer's input otherwise and move a level by one
    (tests/search/test_compile.py), which moves every layer after it; a miscompiled step is off
    by its whole size, or not finite. A step that raises or differs by more turns compiling
    off (the module's forward runs eagerly): "running the network eagerly"; so does an eager
    step that fails, which leaves nothing to prove the compiled one against.

The kernels are checked first: the step check's eager side then runs what the run will run.
`Paths` says what the run goes through; found.json and metrics.json record it. A CPU run checks
nothing: its quantizers never take the kernels ("eager"), and it compiles as configured.
"""

import copy
import logging
from dataclasses import dataclass
from functools import partial
from importlib import import_module

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edmips.core.classifier import Classifier
from edmips.nn import MIXED_LAYERS
from edmips.quant import activation
from edmips.quant.activation import StreamSTE, hwgq
from edmips.quant.mixed import mixed_hwgq, mixed_weight
from edmips.quant.primitives import FULL_PRECISION, GAUSS_STEPS, HWGQ_STEPS
from edmips.quant.protocol import ActivationQuantizer, quantizers

log = logging.getLogger(__name__)

# dtype: (values and elementwise gradients, the selectors' gradients), relative to 1 + |reference|
KERNEL_TOLERANCE = {torch.float32: (1e-5, 1e-4), torch.bfloat16: (2e-2, 2e-2)}
# autocast: (the loss, relative to max(1, |loss|); the gradients, relative to their norm)
STEP_TOLERANCE = {False: (1e-2, 0.1), True: (5e-2, 0.3)}
ACTIVATION_SHAPE = (2, 8, 9, 9)  # 1296 elements: a full block of the kernels and a partial one
WEIGHT_SHAPE = (16, 8, 3, 3)  # 16 output channels of 72 weights
STEP_BATCH = 8  # the step check's batch where the data module states none
EAGER_QUANTIZERS = "running the eager quantizers"
EAGER_NETWORK = "running the network eagerly"


@dataclass(frozen=True)
class Paths:
    """What a run goes through: the quantizers' fused kernels ("triton") or their PyTorch
    formulas ("eager"), and whether the network's forward is compiled."""

    kernels: str
    compiled: bool

    def record(self) -> dict:
        """The fields found.json and metrics.json record."""
        return {"kernels": self.kernels, "compiled": self.compiled}


def check_paths(module: Classifier, datamodule, gpu: bool, autocast: bool) -> Paths:
    """The programs' call, once the module is built and before it trains: on a GPU run (`gpu`:
    the trainer asks for one; `autocast`: bf16, the fast path), check the kernels and the
    compiled step there and fall back from what fails; on a CPU, nothing."""
    if not runs_on_gpu(gpu):
        return Paths("eager", module.compile_mode is not None)
    batch = (getattr(datamodule, "batch_size", STEP_BATCH), *datamodule.input_size)
    return run_checks(module, batch, datamodule.num_classes, torch.device("cuda"), autocast)


def runs_on_gpu(gpu: bool) -> bool:
    """A GPU run (`gpu`: the trainer asks for one) on a machine that has one (where it has none,
    Lightning says so, not the check)."""
    return gpu and torch.cuda.is_available()


def run_checks(
    module: Classifier,
    batch_shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
    autocast: bool,
    kernels=None,
    compile_fn=torch.compile,
) -> Paths:
    """(a) and (b) on `device`, as though it were a GPU: the kernels off where they fail (where
    they were on), the module's compiling off where its step fails. `kernels`: the module of
    entry points (edmips.quant.kernels), `compile_fn`: torch.compile; the tests pass others."""
    if activation.KERNELS_ENABLED:
        dtypes = (torch.float32, torch.bfloat16) if autocast else (torch.float32,)
        problem = check_kernels(network_bits(module.model), device, dtypes, kernels)
        if problem:
            log.warning("%s: %s", problem, EAGER_QUANTIZERS)
            activation.disable_kernels()
    if module.compile_mode is not None:
        x, y = random_batch(batch_shape, num_classes, device, module.channels_last)
        problem = check_compiled_step(module.model, module.compile_mode, x, y, autocast, compile_fn)
        if problem:
            log.warning("%s: %s", problem, EAGER_NETWORK)
            module.set_compile(None)
    kernels_path = "triton" if activation.KERNELS_ENABLED else "eager"
    return Paths(kernels_path, module.compile_mode is not None)


# -- (a) the kernels ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetworkBits:
    """The bit-widths at which a network's quantizers may call the kernels."""

    activation: tuple[int, ...]  # every activation quantizer's (full precision aside)
    activation_spaces: tuple[tuple[int, ...], ...]  # the composite layers' input candidates
    weight_spaces: tuple[tuple[int, ...], ...]  # and their weight candidates


def network_bits(model: nn.Module) -> NetworkBits:
    activations = {
        q.bits
        for _, q in quantizers(model)
        if isinstance(q, ActivationQuantizer) and q.bits < FULL_PRECISION
    }
    mixed = [m for m in model.modules() if isinstance(m, MIXED_LAYERS)]
    return NetworkBits(
        tuple(sorted(activations)),
        tuple(sorted({m.abits for m in mixed if m.abits is not None})),
        tuple(sorted({m.wbits for m in mixed})),
    )


@dataclass(frozen=True)
class Comparison:
    """One kernel entry point's call on the device against the reference's outputs."""

    name: str  # the entry point in edmips.quant.kernels
    at: str  # what it runs at: "4 bits", "bits [2, 3, 4]"
    args: tuple  # its arguments, on the device
    expected: list[Tensor]  # the reference's outputs, on the CPU
    tolerances: list[float]  # each output's (KERNEL_TOLERANCE)


def check_kernels(bits: NetworkBits, device: torch.device, dtypes, kernels=None) -> str | None:
    """None where every kernel entry point matches the reference at the network's bit-widths;
    else what failed first, in one line."""
    if kernels is None:
        try:
            kernels = import_module("edmips.quant.kernels")
        except Exception as e:  # triton missing or broken: the reference needs none of it
            return f"the fused kernels cannot be loaded ({_one_line(e)})"
    for dtype in dtypes:
        for c in comparisons(bits, device, dtype):
            where = f"fused kernel {c.name} ({c.at}, {str(dtype).removeprefix('torch.')})"
            try:
                problem = difference(getattr(kernels, c.name)(*c.args), c)
            except Exception as e:
                return f"{where} failed ({_one_line(e)})"
            if problem:
                return f"{where} {problem}"
    return None


def difference(got, c: Comparison) -> str | None:
    """How a kernel's outputs (a tensor or a tuple) differ from the reference's beyond the
    tolerance; None where they do not."""
    got = got if isinstance(got, tuple) else (got,)
    for out, ref, tol in zip(got, c.expected, c.tolerances, strict=True):
        if out.shape != ref.shape:
            return f"gives shape {list(out.shape)}, the reference {list(ref.shape)}"
        error = relative_error(out, ref)
        if not error <= tol:  # NaN included
            return f"differs from the reference by {error:.3g} > {tol:g}"
    return None


def relative_error(got: Tensor, expected: Tensor) -> float:
    """max |got - expected| / (1 + |expected|), on the CPU in float32 (0 for empty tensors)."""
    got, expected = got.detach().cpu().float(), expected.detach().cpu().float()
    if not got.numel():
        return 0.0
    return ((got - expected).abs() / (1 + expected.abs())).max().item()


def comparisons(bits: NetworkBits, device: torch.device, dtype: torch.dtype):
    """A Comparison for every kernel entry point the network may call, at every bit-width (or
    candidate set) it holds, on inputs of `dtype`."""
    value_tol, sum_tol = KERNEL_TOLERANCE[dtype]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(ACTIVATION_SHAPE, generator=gen) * 1.5).to(dtype)
    grad = torch.randn(ACTIVATION_SHAPE, generator=gen).to(dtype)
    xd, gd = x.to(device), grad.to(device)
    for b in (b for b in bits.activation if b in HWGQ_STEPS):
        out, (grad_x,) = _reference(partial(hwgq, bits=b), [x], grad)
        at = f"{b} bits"
        yield Comparison("hwgq_forward", at, (xd, b), [out], [value_tol])
        yield Comparison("hwgq_backward", at, (xd, gd, b), [grad_x], [value_tol])
    for b in (b for b in bits.activation if b >= 2):  # 1 signed bit has no level but 0
        qmax = 2 ** (b - 1) - 1
        scale = (x.float().abs().amax() / qmax).to(dtype)
        out, (grad_x,) = _reference(partial(_stream, scale=scale, qmax=qmax), [x], grad)
        at, scale = f"{b} bits", scale.to(device)
        yield Comparison("stream_forward", at, (xd, scale, qmax), [out], [value_tol])
        yield Comparison("stream_backward", at, (xd, gd, scale, qmax), [grad_x], [value_tol])
    for space in bits.activation_spaces:
        if not all(b in HWGQ_STEPS for b in space):
            continue
        probs = _probs(len(space))
        out, (grad_x, grad_p) = _reference(partial(mixed_hwgq, bits=space), [x, probs], grad)
        at, probs = f"bits {list(space)}", probs.to(device)
        yield Comparison("mixed_hwgq_forward", at, (xd, probs, space), [out], [value_tol])
        yield Comparison(
            "mixed_hwgq_backward",
            at,
            (xd, gd, probs, space),
            [grad_x, grad_p],
            [value_tol, sum_tol],
        )
    if dtype != torch.float32:
        return  # weights are float32 parameters, under autocast too
    w = torch.randn(WEIGHT_SHAPE, generator=gen) * 0.05
    w_grad = torch.randn(WEIGHT_SHAPE, generator=gen)
    wd, w_grad_d = w.to(device), w_grad.to(device)
    for space in bits.weight_spaces:
        if not all(b in GAUSS_STEPS for b in space):
            continue
        probs = _probs(len(space))
        out, (_, grad_p) = _reference(partial(mixed_weight, bits=space), [w, probs], w_grad)
        at, probs = f"bits {list(space)}", probs.to(device)
        yield Comparison("mixed_weight_forward", at, (wd, probs, space), [out], [value_tol])
        yield Comparison(
            "mixed_weight_backward", at, (wd, w_grad_d, probs, space), [grad_p], [sum_tol]
        )


def _stream(x: Tensor, scale: Tensor, qmax: int) -> Tensor:
    return StreamSTE.apply(x, scale, qmax)


def _probs(n: int) -> Tensor:
    """Selector probabilities away from uniform, so that every candidate's weight matters."""
    return torch.softmax(torch.linspace(-0.5, 0.7, n), 0)


def _reference(fn, inputs: list[Tensor], grad: Tensor) -> tuple[Tensor, list[Tensor]]:
    """fn's output on the CPU copies of `inputs` and their gradients under `grad`: the PyTorch
    formulas, which CPU tensors always take."""
    leaves = [t.detach().cpu().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    out.backward(grad.cpu())
    return out.detach(), [leaf.grad for leaf in leaves]


# -- (b) the compiled training step ---------------------------------------------------------------
def random_batch(shape, num_classes: int, device: torch.device, channels_last: bool = False):
    """Images in [0, 1) and labels, from a generator of their own: the run's random stream (its
    seed, its data order) is the same with the check as without."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=gen)
    y = torch.randint(num_classes, (shape[0],), generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x.to(device), y.to(device)


def check_compiled_step(
    model: nn.Module, mode: str, x: Tensor, y: Tensor, autocast: bool, compile_fn=torch.compile
) -> str | None:
    """None where one compiled training step of (a copy of) `model` agrees with the eager step;
    else what went wrong, in one line. Neither step touches `model`."""
    try:  # a copy or a step that fails here is the check's failure: compiling goes unproven
        net = _training_copy(model, x.device)
        eager = train_step(net, net, x, y, autocast)
    except Exception as e:
        return f"the eager training step to compare the compiled one with failed ({_one_line(e)})"
    del net  # the compiled copy takes the memory (the eager gradients stay, in `eager`)
    try:
        net = _training_copy(model, x.device)
        compiled = train_step(net, compile_fn(net, mode=mode), x, y, autocast)
    except Exception as e:
        return f"torch.compile (mode {mode}) failed on a training step ({_one_line(e)})"
    finally:
        # Forget the copy's compiled code and the shapes it saw: the run compiles its own
        # network afresh, its batch dimension as static as without the check.
        torch.compiler.reset()
    problem = step_difference(eager, compiled, autocast)
    if problem:
        return f"the compiled training step (mode {mode}) differs from the eager one: {problem}"
    return None


def _training_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A copy of model on `device` in training mode, its dropout off: the eager and the compiled
    step draw no random numbers, which they would draw differently."""
    net = copy.deepcopy(model).to(device).train()
    for m in net.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    return net


def train_step(net: nn.Module, forward, x: Tensor, y: Tensor, autocast: bool):
    """The loss of `forward(x)` (net itself, or its compiled form) and net's gradients, as
    Lightning trains: forward and loss under autocast, backward outside it."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        loss = F.cross_entropy(forward(x), y)
    loss.backward()
    grads = {n: p.grad.detach().float() for n, p in net.named_parameters() if p.grad is not None}
    return loss.detach().float().item(), grads


def step_difference(eager, compiled, autocast: bool) -> str | None:
    """None where the compiled step's (loss, gradients) are within STEP_TOLERANCE of the eager
    step's; else how they differ."""
    loss_tol, grad_tol = STEP_TOLERANCE[autocast]
    (loss_e, grads_e), (loss_c, grads_c) = eager, compiled
    missing = sorted(grads_e.keys() - grads_c.keys())
    if missing:
        return f"no gradient for {missing[0]}"
    loss_error = abs(loss_c - loss_e) / max(1.0, abs(loss_e))
    if not loss_error <= loss_tol:  # NaN included
        return f"loss {loss_c:.6g} against {loss_e:.6g}, by {loss_error:.3g} > {loss_tol:g}"
    diff = sum(float((grads_c[n] - g).square().sum()) for n, g in grads_e.items())
    norm = sum(float(g.square().sum()) for g in grads_e.values())
    grad_error = (diff / norm) ** 0.5 if norm else diff**0.5
    if not grad_error <= grad_tol:
        return f"gradients by {grad_error:.3g} of their norm > {grad_tol:g}"
    return None


def _one_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
