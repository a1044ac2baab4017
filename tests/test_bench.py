"""bench/step.py: the naive composite layer is a fair stand-in for MixedConv2d (same values,
same gradients, more saved tensors), and the benchmark's main emits the promised lines."""

import json

import pytest
import torch
from conftest import load_bench

from edmips.nn.layers import MixedConv2d

# bench/step.py loaded once (a module fixture), on one worker.
pytestmark = pytest.mark.xdist_group("bench")

WBITS, ABITS = (1, 2, 3, 4), (2, 3, 4)


@pytest.fixture(scope="module")
def bench():
    return load_bench("step")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threads only cost (and on a shared, busy CPU they cost a lot)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(bench, per_channel=True, abits=ABITS):
    torch.manual_seed(0)
    fused = MixedConv2d(
        6, 8, 3, padding=1, bias=False, wbits=WBITS, abits=abits, per_channel=per_channel
    )
    with torch.no_grad():  # selectors away from uniform, so every probability matters
        fused.alpha_w.copy_(torch.randn(len(WBITS)))
        fused.alpha_a.copy_(torch.randn(len(abits)))
    naive = bench.to_naive(torch.nn.Sequential(_copy(fused)))[0]
    return fused, naive


def _copy(layer):
    new = MixedConv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        padding=layer.padding,
        bias=False,
        wbits=layer.wbits,
        abits=layer.abits,
        per_channel=layer.per_channel,
    )
    new.load_state_dict(layer.state_dict())
    return new


@pytest.mark.parametrize("per_channel", [True, False])
def test_naive_layer_matches_mixed_conv(bench, per_channel):
    fused, naive = _pair(bench, per_channel)
    assert type(naive) is bench.NaiveMixedConv2d and naive is not fused
    x0 = torch.randn(4, 6, 10, 10) * 1.5
    x1, x2 = x0.clone().requires_grad_(True), x0.clone().requires_grad_(True)
    out1, out2 = fused(x1), naive(x2)
    assert torch.allclose(out1, out2, atol=1e-5)
    g = torch.randn_like(out1)
    (out1 * g).sum().backward()
    (out2 * g).sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5)
    assert torch.allclose(fused.weight.grad, naive.weight.grad, atol=1e-4)
    assert torch.allclose(fused.alpha_w.grad, naive.alpha_w.grad, atol=1e-3)
    assert torch.allclose(fused.alpha_a.grad, naive.alpha_a.grad, atol=1e-3)
    assert fused.alpha_w.grad.abs().sum() > 0 and fused.alpha_a.grad.abs().sum() > 0


def _saved_activation_tensors(layer, x):
    """Saved tensors at least as big as the input (activations, not weights or selectors)."""
    ptrs = set()

    def pack(t):
        if t.numel() >= x.numel():
            ptrs.add(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        layer(x)
    return len(ptrs)


def test_naive_layer_saves_a_tensor_per_activation_candidate(bench):
    x = torch.randn(2, 6, 16, 16, requires_grad=True)  # more elements than the weight
    fused_counts, naive_counts = [], []
    for abits in ((2,), (2, 3), (2, 3, 4)):
        fused, naive = _pair(bench, abits=abits)
        fused_counts.append(_saved_activation_tensors(fused, x))
        naive_counts.append(_saved_activation_tensors(naive, x))
    assert len(set(fused_counts)) == 1, fused_counts
    assert naive_counts[0] < naive_counts[1] < naive_counts[2], naive_counts
    assert naive_counts[2] > fused_counts[2]


def test_main_emits_one_line_per_config_and_ratios(bench, tmp_path):
    out = tmp_path / "lines.jsonl"
    lines = bench.main(
        [
            "--model",
            "resnet_tiny",
            "--batch-size",
            "4",
            "--image-size",
            "16",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ]
    )
    assert [line["name"] for line in lines] == [*bench.CONFIGS, "ratios"]
    assert [json.loads(s) for s in out.read_text().splitlines()] == lines
    by = {line["name"]: line for line in lines}
    for name in bench.CONFIGS:
        assert by[name]["ms"] > 0 and by[name]["peak_mib"] > 0
        assert by[name]["memory"] == "saved-for-backward"
        assert by[name]["bf16"] is False and by[name]["channels_last"] is False
    assert by["fp"]["searched_layers"] == 0 and by["search_full"]["searched_layers"] > 0
    ratios = lines[-1]
    for key in ("search_over_uniform", "search_over_naive", "memory_full_over_single"):
        assert ratios[key] > 0
    # edmips's search memory stays flat in the number of candidates; the naive layer's grows.
    assert ratios["memory_full_over_single"] < ratios["naive_memory_full_over_single"]
    assert by["naive_full"]["peak_mib"] > by["search_full"]["peak_mib"]


def test_config_filter(bench):
    lines = bench.main(
        [
            "--model",
            "resnet_tiny",
            "--batch-size",
            "2",
            "--image-size",
            "8",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--config",
            "search_full",
            "fp",
        ]
    )
    assert [line["name"] for line in lines] == ["fp", "search_full", "ratios"]
    assert lines[-1]["search_over_uniform"] is None


def test_best_ratios_take_the_faster_of_eager_and_compiled(bench):
    lines = [
        {"name": "fp", "ms": 10.0},
        {"name": "fp_compiled", "ms": 8.0},
        {"name": "uniform_w2a2", "ms": 30.0},
        {"name": "search_full", "ms": 80.0},
        {"name": "search_full_compiled", "ms": 12.0},
    ]
    ratios = bench.ratios(lines)
    assert ratios["best_search_over_best_fp"] == 1.5  # 12 / 8
    assert ratios["best_search_over_best_uniform"] == 0.4  # 12 / 30
    assert ratios["best_search_ms"] == 12.0
    assert ratios["search_over_uniform"] == round(80 / 30, 3)  # eager against eager


def test_cuda_defaults_add_the_compiled_configurations(bench):
    args = bench.parse_args(["--device", "cuda"])
    assert args.also_compiled and args.bf16 and args.channels_last
    assert not bench.parse_args([]).also_compiled


def test_epoch_bench_times_one_whole_epoch_per_configuration(tmp_path):
    epoch = load_bench("epoch")
    out = tmp_path / "epoch.jsonl"
    args = ["--data", "synthetic", "--model", "resnet_tiny", "--batch-size", "4"]
    lines = epoch.main([*args, "--warmup", "1", "--out", str(out)])
    assert [line["name"] for line in lines] == ["fp", "search", "retrain", "ratios"]
    for line in lines[:3]:  # the synthetic set holds 8 batches: the epoch is all of them
        assert line["steps"] == 8 and line["epoch_s"] > 0 and line["compile"] is False
    assert lines[-1]["search_over_fp"] > 0 and lines[-1]["retrain_over_fp"] > 0
    assert [json.loads(s) for s in out.read_text().splitlines()] == lines


def test_ptq_bench_prints_one_line_per_network_and_phase(tmp_path, capsys):
    ptq = load_bench("ptq")
    out = tmp_path / "ptq.jsonl"
    args = ["--model", "resnet_tiny:16", "--calibration-images", "4", "--test-images", "4"]
    lines = ptq.main([*args, "--threads", "1", "--out", str(out)])
    assert [(line["network"], line["phase"]) for line in lines] == [
        ("resnet_tiny", phase) for phase in ("calibrate", "lower", "export", "verify")
    ]
    assert all(
        line["s"] > 0 and line["threads"] == 1 and line["image_size"] == 16 for line in lines
    )
    assert lines[0]["images"] == 4 and lines[-1]["prediction_agreement"] == 1.0
    printed = [json.loads(s) for s in capsys.readouterr().out.splitlines() if s.startswith("{")]
    assert printed == lines == [json.loads(s) for s in out.read_text().splitlines()]


def test_search_quality_from_float_pairs_each_seed(tmp_path):
    quality = load_bench("search_quality")
    assert quality.uniform_pairs(2, (2, 3, 4)) == [(2, 2)]
    assert quality.uniform_pairs(2, (1, 2, 3, 4)) == [(1, 4), (2, 2)]
    assert quality.uniform_pairs(2.5, (2, 3, 4)) == [(2, 3), (3, 2)]  # 2.449 equivalent bits
    # max-abs weights take no 1 bit: only the allocations measured in the fine-tune's family
    assert list(quality.ptq_allocations((1, 2, 3, 4))) == [
        "sensitivity_edmips",
        "sensitivity_refit",
    ]
    ns = quality.argparse.Namespace(
        bits=[2.5], seeds=[0, 1], wbits=[2, 3, 4], protocol="cpu", data="d.npz", overrides=[]
    )
    allocations, finetunes = quality.float_jobs(ns, tmp_path, tmp_path / "w.pt")
    assert len(allocations) == 2 * 5  # a search and four ptq.py allocations per seed
    assert len(finetunes) == 2 * 8  # searched, 4 from ptq.py, random, 2 uniform
    assert "quant=edmips" in allocations["ptq-sensitivity_edmips-2.5-1"][1]
    assert "sensitivity.measure=refit" in allocations["ptq-sensitivity_refit-2.5-1"][1]
    for _, argv in finetunes.values():
        assert "init=float" in argv and f"model.weights={tmp_path / 'w.pt'}" in argv
    # metrics as the fine-tunes write them: the table pairs each seed's runs
    accs = {"searched": (0.70, 0.72), "sensitivity": (0.69, 0.68), "random": (0.66, 0.67)}
    accs |= {"calibration_search": (0.71, 0.70), "uniform_W2A3": (0.69, 0.73)}
    accs |= {"uniform_W3A2": (0.68, 0.69)}
    for kind, per_seed in accs.items():
        for seed, acc in enumerate(per_seed):
            run = tmp_path / "finetune" / "2.5" / f"{kind}-{seed}"
            run.mkdir(parents=True)
            metrics = {"test_acc": acc, "equivalent_bits": 2.5, "prediction_agreement": 1.0}
            (run / "metrics.json").write_text(json.dumps(metrics | {"qdq_agreement": 1.0}))
    table = quality.float_table(tmp_path)
    assert "| 2.5 | searched | 2.5 | 70.00, 72.00 | 71.00 | 1.41 | 1.0000 |" in table
    assert "| 2.5 | searched - sensitivity | 0, 1 | +1.00, +4.00 | +2.50 |" in table
    # the best uniform under each seed: W2A3 at seed 0 (69) and W2A3 at seed 1 (73)
    assert "| 2.5 | searched - best uniform | 0, 1 | +1.00, -1.00 | +0.00 |" in table
