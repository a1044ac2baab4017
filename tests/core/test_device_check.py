"""The start-of-run check of the GPU paths (edmips.core.device_check), on the CPU: the device is
the CPU, the kernels are Triton's interpreter (as in tests/quant/test_kernels.py) or broken on
purpose, and torch.compile is replaced by functions that fail or compute something else."""

import importlib.util
import json
import logging
import os
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from edmips.core import device_check
from edmips.core.classifier import Classifier
from edmips.core.device_check import NetworkBits, Paths
from edmips.cost.layers import LayerCost
from edmips.nn import MixedConv2d, MixedLinear, QuantConv2d
from edmips.quant import activation
from edmips.records import arch as arch_file
from edmips.records import metrics as metrics_file

# The interpreted kernels (a module fixture): built once, on one worker.
pytestmark = pytest.mark.xdist_group("device_check")

CPU = torch.device("cpu")
EAGER_QUANTIZERS = "running the eager quantizers"
EAGER_NETWORK = "running the network eagerly"


@pytest.fixture(scope="module")
def interpreted():
    """edmips.quant.kernels run by Triton's interpreter on CPU tensors: the real kernels, which
    pass the check. TRITON_INTERPRET stays set while this module's tests run (the interpreter
    reads it again when it rewrites the kernels' inner functions)."""
    pytest.importorskip("triton")
    path = importlib.util.find_spec("edmips.quant.kernels").origin
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        spec = importlib.util.spec_from_file_location("device_check_kernels", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


@pytest.fixture(autouse=True)
def kernels_enabled(monkeypatch):
    """Every test starts with the kernels on and leaves the switch as it found it."""
    monkeypatch.setattr(activation, "KERNELS_ENABLED", True)


def _network() -> nn.Module:
    """Composites (2/3/4-bit and 2/4-bit HWGQ inputs, 1-4 and 2/4-bit weights) and a fixed layer
    with the signed 8-bit stream quantizer: every kernel entry point has a use."""
    torch.manual_seed(0)
    return nn.Sequential(
        MixedConv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        QuantConv2d(8, 8, 3, padding=1, bias=False, wbits=4, abits=8, aquant="ema"),
        nn.BatchNorm2d(8),
        nn.Dropout(0.5),  # off in the step check: eager and compiled would draw other masks
        MixedLinear(8, 10, wbits=(2, 4), abits=(2, 4), pool_input=True),
    )


def _module(compile=None) -> Classifier:
    return Classifier(_network(), 10, compile=compile)


def _run(module, kernels, compile_fn=None, autocast=False) -> Paths:
    return device_check.run_checks(
        module,
        (4, 3, 8, 8),
        10,
        CPU,
        autocast,
        kernels,
        compile_fn or (lambda net, mode: pytest.fail("compiled without a compile mode")),
    )


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


class _Patched:
    """The kernels module with one entry point replaced."""

    def __init__(self, kernels, name, replacement):
        self._kernels, self._name, self._replacement = kernels, name, replacement

    def __getattr__(self, attr):
        return self._replacement if attr == self._name else getattr(self._kernels, attr)


def _scaled(fn, factor):
    def scaled(*args):
        out = fn(*args)
        return tuple(t * factor for t in out) if isinstance(out, tuple) else out * factor

    return scaled


# -- (a) the kernels ------------------------------------------------------------------------------
def test_the_network_bits_are_those_its_quantizers_hold():
    bits = device_check.network_bits(_network())
    assert bits.activation == (2, 3, 4, 8)
    assert bits.activation_spaces == ((2, 3, 4), (2, 4))
    assert bits.weight_spaces == ((1, 2, 3, 4), (2, 4))


def test_disabled_kernels_are_not_used_for_cuda_tensors():
    cuda_tensor = SimpleNamespace(is_cuda=True)  # all that use_kernels reads of a tensor
    assert activation.use_kernels(cuda_tensor)
    activation.disable_kernels()
    assert not activation.use_kernels(cuda_tensor)


@pytest.mark.parametrize("autocast", [False, True])
def test_the_real_kernels_pass_and_stay_on(interpreted, caplog, autocast):
    dtypes = []

    def forward(x, bits):
        dtypes.append(x.dtype)
        return interpreted.hwgq_forward(x, bits)

    paths = _run(_module(), _Patched(interpreted, "hwgq_forward", forward), autocast=autocast)
    assert paths == Paths("triton", False)
    assert activation.KERNELS_ENABLED and not _warnings(caplog)
    # at each of the network's four activation bit-widths, in bfloat16 too under autocast
    assert dtypes == [torch.float32] * 4 + ([torch.bfloat16] * 4 if autocast else [])


def test_a_kernel_that_raises_turns_the_kernels_off_with_one_warning(interpreted, caplog):
    def broken(*args):
        raise RuntimeError("PTX JIT compilation failed\nsecond line")

    paths = _run(_module(), _Patched(interpreted, "hwgq_backward", broken))
    assert paths == Paths("eager", False)
    assert not activation.KERNELS_ENABLED
    assert _warnings(caplog) == [
        "fused kernel hwgq_backward (2 bits, float32) failed (RuntimeError: PTX JIT compilation "
        f"failed): {EAGER_QUANTIZERS}"
    ]


@pytest.mark.parametrize(
    "name,factor,message",
    [
        # values: 1e-5 of 1 + |reference| in float32
        ("hwgq_forward", 1.5, "fused kernel hwgq_forward (2 bits, float32) differs from the "),
        ("stream_backward", 1 + 1e-3, "fused kernel stream_backward (2 bits, float32) differs "),
        ("mixed_hwgq_forward", 1 + 1e-4, "mixed_hwgq_forward (bits [2, 3, 4], float32) differs"),
        ("mixed_hwgq_forward", 1 + 1e-7, None),  # float rounding: accepted
        # the selectors' gradients, sums over the tensor: 1e-4
        ("mixed_weight_backward", 1 + 1e-3, "mixed_weight_backward (bits [1, 2, 3, 4], float32)"),
        ("mixed_weight_backward", 1 + 1e-6, None),
    ],
)
def test_a_kernel_beyond_the_tolerance_is_caught_and_one_within_it_accepted(
    interpreted, caplog, name, factor, message
):
    kernels = _Patched(interpreted, name, _scaled(getattr(interpreted, name), factor))
    paths = _run(_module(), kernels)
    if message is None:
        assert paths.kernels == "triton" and not _warnings(caplog)
        return
    assert paths.kernels == "eager" and not activation.KERNELS_ENABLED
    (warning,) = _warnings(caplog)
    assert message in warning and warning.endswith(f": {EAGER_QUANTIZERS}")
    assert " > 1e-05" in warning or " > 0.0001" in warning


def test_bfloat16_is_checked_under_autocast_only(interpreted, caplog):
    def wrong_in_bfloat16(x, bits):
        out = interpreted.hwgq_forward(x, bits)
        return out * 1.1 if x.dtype == torch.bfloat16 else out

    kernels = _Patched(interpreted, "hwgq_forward", wrong_in_bfloat16)
    assert _run(_module(), kernels, autocast=False).kernels == "triton"
    assert _run(_module(), kernels, autocast=True).kernels == "eager"
    (warning,) = _warnings(caplog)
    assert warning.startswith("fused kernel hwgq_forward (2 bits, bfloat16) differs from the ")
    assert "> 0.02" in warning


def test_a_kernel_of_the_wrong_shape_or_not_finite_is_caught(interpreted):
    short = _Patched(interpreted, "stream_forward", lambda x, *a: x[:1])
    problem = device_check.check_kernels(NetworkBits((8,), (), ()), CPU, [torch.float32], short)
    assert problem == (
        "fused kernel stream_forward (8 bits, float32) gives shape [1, 8, 9, 9], "
        "the reference [2, 8, 9, 9]"
    )
    nan = _Patched(interpreted, "hwgq_forward", lambda x, b: torch.full_like(x, float("nan")))
    problem = device_check.check_kernels(NetworkBits((8,), (), ()), CPU, [torch.float32], nan)
    assert (
        problem
        == "fused kernel hwgq_forward (8 bits, float32) differs from the reference by nan > 1e-05"
    )


def test_kernels_that_cannot_be_loaded_are_not_used(monkeypatch, caplog):
    def no_triton(name):
        raise ModuleNotFoundError("No module named 'triton'")

    monkeypatch.setattr(device_check, "import_module", no_triton)
    assert _run(_module(), kernels=None) == Paths("eager", False)
    assert _warnings(caplog) == [
        "the fused kernels cannot be loaded (ModuleNotFoundError: No module named 'triton'): "
        f"{EAGER_QUANTIZERS}"
    ]


def test_kernels_already_off_are_not_checked_again(caplog):
    activation.disable_kernels()
    kernels = _Patched(None, "hwgq_forward", None)  # any use of it would raise
    assert _run(_module(), kernels) == Paths("eager", False) and not _warnings(caplog)


# -- (b) the compiled step ------------------------------------------------------------------------
def _identity(net, mode):
    return net


def test_a_compiled_step_that_agrees_keeps_compiling(interpreted, caplog):
    modes = []

    def compile_fn(net, mode):
        modes.append(mode)
        return lambda x: net(x) * (1 + 1e-4)  # within float rounding of a flipped level

    module = _module("max-autotune")
    assert _run(module, interpreted, compile_fn) == Paths("triton", True)
    assert modes == ["max-autotune"] and module.compile_mode == "max-autotune"
    assert not _warnings(caplog)


def test_a_compile_failure_runs_the_network_eagerly_with_one_warning(interpreted, caplog):
    def compile_fn(net, mode):
        def fails(x):  # as torch.compile does: on the first call, not when wrapping
            raise RuntimeError("InductorError: C++ compile error\nmore lines")

        return fails

    module = _module("default")
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    assert _run(module, interpreted, compile_fn) == Paths("triton", False)
    assert module.compile_mode is None
    assert _warnings(caplog) == [
        "torch.compile (mode default) failed on a training step (RuntimeError: InductorError: "
        f"C++ compile error): {EAGER_NETWORK}"
    ]
    module.eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(module(x), module.model(x))  # the forward no longer goes through it
    after = module.model.state_dict()  # the check trained copies, not the network
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_compiled_and_kernel_failures_are_each_one_warning(interpreted, caplog):
    def broken(*args):
        raise RuntimeError("no kernel image is available for execution on the device")

    module = _module("reduce-overhead")
    kernels = _Patched(interpreted, "mixed_hwgq_forward", broken)
    paths = _run(module, kernels, lambda net, mode: 1 / 0)
    assert paths == Paths("eager", False)
    assert [w.split(" (")[0] for w in _warnings(caplog)] == [
        "fused kernel mixed_hwgq_forward",
        "torch.compile",
    ]


def test_an_eager_step_that_fails_leaves_compiling_unproven_and_off(
    interpreted, monkeypatch, caplog
):
    def no_copy(model, device):
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(device_check, "_training_copy", no_copy)
    module = _module("default")
    assert _run(module, interpreted, _identity) == Paths("triton", False)
    assert _warnings(caplog) == [
        "the eager training step to compare the compiled one with failed (TypeError: cannot "
        f"pickle '_thread.lock' object): {EAGER_NETWORK}"
    ]


def _doubled_gradient(net, mode):
    def forward(x):
        out = net(x)
        return out + (out - out.detach())  # the same values, twice the gradient

    return forward


@pytest.mark.parametrize(
    "compile_fn,message",
    [
        (lambda net, mode: lambda x: net(x) + torch.linspace(0, 9, 10), "loss "),
        (_doubled_gradient, "gradients by 1 of their norm > 0.1"),
        (lambda net, mode: lambda x: net(x) * float("nan"), "loss nan against "),
    ],
)
def test_a_compiled_step_that_differs_runs_the_network_eagerly(
    interpreted, caplog, compile_fn, message
):
    module = _module("default")
    assert _run(module, interpreted, compile_fn) == Paths("triton", False)
    (warning,) = _warnings(caplog)
    assert warning.startswith(
        "the compiled training step (mode default) differs from the eager one: "
    )
    assert message in warning and warning.endswith(f": {EAGER_NETWORK}")


def test_step_difference_tolerances():
    grads = {"w": torch.tensor([3.0, 4.0])}
    eager = (2.0, grads)
    assert device_check.step_difference(eager, (2.019, grads), False) is None
    assert "by 0.0105 > 0.01" in device_check.step_difference(eager, (2.021, grads), False)
    assert device_check.step_difference(eager, (2.09, grads), True) is None  # bf16: 5e-2
    off = {"w": torch.tensor([3.0, 4.4])}  # 0.4 / 5 = 0.08 of the norm
    assert device_check.step_difference(eager, (2.0, off), False) is None
    off = {"w": torch.tensor([3.0, 4.6])}  # 0.12
    assert "gradients by 0.12 of their norm > 0.1" in device_check.step_difference(
        eager, (2.0, off), False
    )
    assert device_check.step_difference(eager, (2.0, off), True) is None  # bf16: 0.3
    assert device_check.step_difference((2.0, {**grads, "b": grads["w"]}), eager, False) == (
        "no gradient for b"
    )


@pytest.mark.slow
def test_the_real_torch_compile_passes_the_step_check(caplog):
    """torch.compile on the CPU, float32: a composite network's compiled step is within the
    tolerance of its eager step (levels that flip by one included)."""
    model = _network()
    x, y = device_check.random_batch((8, 3, 8, 8), 10, CPU)
    assert device_check.check_compiled_step(model, "default", x, y, autocast=False) is None


# -- what the programs call, and what the files record --------------------------------------------
class _Data:
    batch_size, input_size, num_classes = 16, (3, 8, 8), 10


@pytest.mark.parametrize("compile,compiled", [(None, False), ("default", True)])
@pytest.mark.parametrize("gpu", [False, True])  # asked for a GPU or not, on a machine without
def test_a_cpu_run_checks_nothing_and_records_eager_kernels(monkeypatch, compile, compiled, gpu):
    monkeypatch.setattr(device_check, "run_checks", lambda *a, **k: pytest.fail("checked"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    module = _module(compile)
    assert device_check.check_paths(module, _Data(), gpu, True) == Paths("eager", compiled)
    assert activation.KERNELS_ENABLED  # the switch is only for a failed check


def test_a_gpu_run_checks_on_cuda_with_the_run_batch_and_autocast(monkeypatch):
    calls = []
    module = _module("default")
    monkeypatch.setattr(device_check, "run_checks", lambda *a: calls.append(a) or "paths")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with a GPU
    assert device_check.check_paths(module, _Data(), True, True) == "paths"
    assert calls == [(module, (16, 3, 8, 8), 10, torch.device("cuda"), True)]


def test_the_paths_round_trip_in_metrics_json_and_older_files_read(tmp_path):
    values = dict(model="resnet8", equivalent_bits=2.0, bitops=400, weight_bits_total=800)
    m = metrics_file.RetrainMetrics.from_record({**values, **Paths("triton", True).record()})
    written = json.loads(metrics_file.save(m, tmp_path / "metrics.json").read_text())
    assert (written["kernels"], written["compiled"]) == ("triton", True)
    assert metrics_file.load(tmp_path / "metrics.json") == m
    (tmp_path / "old.json").write_text(json.dumps(values))
    old = metrics_file.load(tmp_path / "old.json")
    assert old.kernels is None and old.compiled is None


@pytest.mark.parametrize(
    "field,message",
    [
        ('"kernels": "banana"', 'kernels=\'banana\' is not "triton" or "eager"'),
        ('"kernels": true', "kernels=True is not"),
        ('"compiled": "yes"', "compiled='yes' is not true or false"),
    ],
)
def test_bad_paths_are_refused_in_metrics_json(tmp_path, field, message):
    required = '"model": "m", "equivalent_bits": 2, "bitops": 1, "weight_bits_total": 1'
    path = tmp_path / "metrics.json"
    path.write_text("{" + required + ", " + field + "}")
    with pytest.raises(metrics_file.MetricsError, match="^" + str(path) + ": ") as e:
        metrics_file.load(path)
    assert message in str(e.value)


def _found(**meta):
    costs = [
        LayerCost("conv1", "conv", 1000, 90, 100, ()),
        LayerCost("l2", "conv", 3000, 270, 100, ()),
    ]
    return arch_file.build(
        "resnet8", {"wbits": [2, 4], "abits": [2, 4]}, costs, [2, 4], [2, 4], **meta
    )


def test_the_paths_round_trip_in_found_json_and_older_files_read(tmp_path):
    found = _found(**Paths("eager", False).record())
    d = json.loads(arch_file.save(found, tmp_path / "found.json").read_text())
    assert (d["kernels"], d["compiled"]) == ("eager", False)
    assert arch_file.load(tmp_path / "found.json") == found
    assert "kernels" not in arch_file.from_dict(_found().to_dict()).extra


@pytest.mark.parametrize(
    "meta,message",
    [
        ({"kernels": "banana"}, 'kernels=\'banana\' is not "triton" or "eager"'),
        ({"compiled": 1}, "compiled=1 is not true or false"),
    ],
)
def test_bad_paths_are_refused_in_found_json(meta, message):
    with pytest.raises(arch_file.ArchError, match="^found.json: ") as e:
        arch_file.from_dict({**_found().to_dict(), **meta}, "found.json")
    assert message in str(e.value)


def test_runs_whose_gpu_check_fails_go_on_eagerly_and_record_it(
    search_cfg, retrain_cfg, tmp_path, monkeypatch, caplog, interpreted, no_search_figures
):
    """search and retrain, as on a GPU whose kernel mixed_hwgq_forward is off and whose compiler
    fails (the check run on the CPU): one warning each, then the runs train eagerly and their
    files say so."""
    from edmips.programs.retrain import retrain
    from edmips.programs.search import search

    check = device_check.run_checks
    kernels = _Patched(
        interpreted, "mixed_hwgq_forward", _scaled(interpreted.mixed_hwgq_forward, 2)
    )

    def on_the_cpu(module, batch_shape, num_classes, device, autocast):
        assert device == torch.device("cuda") and not autocast  # fast=false: no bf16 autocast
        assert module.compile_mode == "default"
        return check(module, (2, *batch_shape[1:]), num_classes, CPU, autocast, kernels, no_cc)

    def no_cc(net, mode):
        raise RuntimeError("InductorError: no C++ compiler")

    monkeypatch.setattr(device_check, "runs_on_gpu", lambda gpu: True)
    monkeypatch.setattr(device_check, "run_checks", on_the_cpu)
    result = search(
        search_cfg(
            "search.compile=true", "search.warmup_epochs=0", "trainer.max_epochs=1", "fast=false"
        )
    )
    found = json.loads((tmp_path / "found.json").read_text())
    assert (found["kernels"], found["compiled"]) == ("eager", False)
    assert result["module"].compile_mode is None  # it trained eagerly
    assert [w.split(" (")[0] for w in _warnings(caplog)] == [
        "fused kernel mixed_hwgq_forward",
        "torch.compile",
    ]
    caplog.clear()
    monkeypatch.setattr(activation, "KERNELS_ENABLED", True)
    retrain(
        retrain_cfg(
            f"arch={tmp_path / 'found.json'}",
            "compile=true",
            "fast=false",
            "trainer.max_epochs=1",
        )
    )
    written = metrics_file.load(tmp_path / "retrain" / "metrics.json")
    # the retrained network has fixed bits: no composite, mixed_hwgq_forward is not checked
    assert (written.kernels, written.compiled) == ("triton", False)
    assert [w.split(" (")[0] for w in _warnings(caplog)] == ["torch.compile"]
