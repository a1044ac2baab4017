"""Several budgets at once, end to end on the demo (CPU, tiny network): each an upper bound,
all met by the discretized network (searched or random), the tightest within 1% of its
target; a pair the space cannot meet together is refused before training, naming the one."""

import pytest

from edmips.cost import layers as cost_layers
from edmips.models import create_model
from edmips.nn import default_searched
from edmips.programs.builders import build_datamodule
from edmips.programs.checks import check_retrain
from edmips.programs.retrain import arch_record, resolve_arch
from edmips.programs.search import search
from edmips.records import arch
from edmips.report import collect
from edmips.search.rediscretize import rediscretize

FLOPS = 2_097_152  # the tiny network's searched layers: 4736 weights


def _ratios(found, bitops=None, weight_bytes=None):
    ratios = {}
    if bitops is not None:
        ratios["bitops"] = found.bitops / bitops
    if weight_bytes is not None:
        ratios["weight_size"] = found.weight_bits_total / (8 * weight_bytes)
    return ratios


def _met(ratios):
    """Every cost at most 1% over its target, the tightest within 1% of it."""
    return max(ratios.values()) <= 1.01 and max(ratios.values()) >= 0.99


@pytest.mark.parametrize(
    "bitops,weight", [(2.5**2 * FLOPS, 1480), (3.5**2 * FLOPS, 1300), (2.3**2 * FLOPS, 1300)]
)  # BitOps binds, weight size binds, both may
def test_a_search_under_bitops_and_weight_size_meets_both(search_cfg, tmp_path, bitops, weight):
    run = search(search_cfg(f"budget.bitops={bitops:.6g}", f"budget.weight_size={weight}B"))
    found = run["arch"]
    ratios = _ratios(found, float(f"{bitops:.6g}"), weight)
    assert _met(ratios), ratios
    # the expected costs: each at most its target, on it where its price is positive
    module = run["module"]
    module.apply_budget()
    prices = module.price.prices.tolist()
    assert max(prices) > 0 and min(prices) >= 0
    for budget, price in zip(module.budgets.held, prices):
        expected = float(budget.cost.expected(module.layers).detach()) / budget.target
        assert expected <= 1.01 and (price == 0 or expected >= 0.99), (budget.cost.name, price)
    saved = arch.load(tmp_path / "found.json")
    assert saved.extra["budget"] == {"bitops": float(f"{bitops:.6g}"), "weight_size": f"{weight}B"}
    recorded = {b["cost"]: b for b in saved.extra["budgets"]}
    searched_bits = saved.weight_bits_total - saved.fixed_weight_bits
    assert recorded["weight_size"]["achieved"] * 4736 == pytest.approx(searched_bits)
    assert recorded["bitops"]["achieved"] == pytest.approx(saved.equivalent_bits)
    labels = [b["budget"] for b in saved.extra["budgets"]]
    assert list(saved.extra["final_prices"]) == labels
    assert labels[1] == f"budget.weight_size={weight}B" and labels[0].startswith("budget.bitops=")
    assert saved.extra["cost"] == "bitops"  # the primary: mu records its price


def test_target_bits_beside_a_budget_is_a_second_upper_bound(search_cfg, tmp_path):
    found = search(search_cfg("target_bits=3", "budget.weight_size=1200B"))["arch"]
    ratios = {"bitops": found.equivalent_bits / 3, **_ratios(found, weight_bytes=1200)}
    assert _met(ratios), ratios
    assert found.extra["target_bits"] == 3
    assert [b["budget"] for b in found.extra["budgets"]] == [
        "target_bits=3",
        "budget.weight_size=1200B",
    ]
    (run,) = collect([tmp_path])  # the report names every budget
    assert run.budget == "BitOps 3 bits eq. + weight size 1200 B"


def _slow_binary_csv(tmp_path):
    """A device without binary kernels: 1-bit weights are the slowest, 2-bit the fastest."""
    model = create_model("resnet_tiny", num_classes=10)
    names = default_searched(model)
    rows, seen = ["layer,wbits,abits,latency_ms\n"], set()
    for layer in cost_layers.measure(model, (3, 32, 32)):
        if layer.name not in names or layer.shape_key in seen:
            continue
        seen.add(layer.shape_key)
        for w in (1, 2, 3, 4):
            for a in (2, 3, 4, 8):
                ms = layer.flops / 1e6 * ((1.0 if w == 1 else 0.1 * w) + 0.05 * a)
                rows.append(f"{layer.shape_key},{w},{a},{ms!r}\n")
    path = tmp_path / "latency.csv"
    path.write_text("".join(rows))
    return path


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["budget.bitops=1e7", "budget.weight_size=500B"],
            "budget.weight_size=500B cannot be met: its cheapest allocation spends 1 bits per",
        ),
        (
            ["budget.weight_size=976B", "budget.latency_ms=1.05"],  # 600 B beside the fixed layers
            "budget.weight_size=976B cannot be met together with budget.latency_ms=1.05: the "
            "cheapest allocation within it spends 1.7",
        ),
        (["target_bits=2", "budget.bitops=1e7"], "set budget.bitops or target_bits, not both"),
        (
            ["cost=weight_size", "target_bits=2", "budget.weight_size=1KiB"],
            "set budget.weight_size or target_bits, not both",
        ),
    ],
)
def test_budgets_the_space_cannot_meet_together_are_refused_before_training(
    search_cfg, tmp_path, overrides, message
):
    if any("latency" in o for o in overrides):
        overrides = [*overrides, "cost=latency_table", f"cost.path={_slow_binary_csv(tmp_path)}"]
    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as e:
        search(search_cfg(*overrides))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "found.json").exists()


def test_arch_random_under_two_budgets_meets_both(retrain_cfg):
    def found(seed):
        cfg = retrain_cfg(
            "arch=random", f"budget.bitops={2.5**2 * FLOPS:.6g}", "budget.weight_size=1400B",
            f"seed={seed}",
        )  # fmt: skip
        return resolve_arch(cfg, check_retrain(cfg), build_datamodule(cfg))[1]

    first, other = found(0), found(1)
    for a in (first, other):
        assert _met(_ratios(a, float(f"{2.5**2 * FLOPS:.6g}"), 1400))
    assert first.bits() != other.bits()
    assert [b["cost"] for b in first.extra["budgets"]] == ["bitops", "weight_size"]


def test_three_budgets_at_once_are_all_met_and_rediscretized_within_them(search_cfg, tmp_path):
    # 3 equivalent bits; 1480 B of weights (1.86 bits per searched weight beside the fixed
    # layers' 3008 bits); 12000 B of the 36864 activations the searched layers read (2.6 bits)
    bitops, weight, activations = 9 * FLOPS, 1480, 12000
    cfg = search_cfg(
        f"budget.bitops={bitops}", f"budget.weight_size={weight}B",
        f"budget.activation_memory={activations}B",
    )  # fmt: skip
    found = search(cfg)["arch"]

    def ratios(a):
        return {
            **_ratios(a, bitops, weight),
            "activation_memory": a.activation_bits_total / (8 * activations),
        }

    assert _met(ratios(found)), ratios(found)
    recorded = [b["cost"] for b in found.extra["budgets"]]
    assert recorded == ["bitops", "weight_size", "activation_memory"]
    # the search's last selectors, discretized again within the three recorded budgets
    again = rediscretize(tmp_path, 2, "budget")
    assert _met(ratios(again)), ratios(again)
    assert again.bits() == found.bits()
    assert again.fixed_weight_bits == found.fixed_weight_bits == 3008
    assert [b["budget"] for b in again.extra["budgets"]] == [
        b["budget"] for b in found.extra["budgets"]
    ]


def test_metrics_json_records_the_budgets_an_architecture_was_made_within(retrain_cfg):
    cfg = retrain_cfg("arch=random", "target_bits=3", "budget.weight_size=1400B")
    found = resolve_arch(cfg, check_retrain(cfg), build_datamodule(cfg))[1]
    record = arch_record(cfg, check_retrain(cfg).family, found, "synthetic")
    assert record["budget"] == {"weight_size": "1400B"}
    assert record["budgets"] == found.extra["budgets"]
    assert [b["budget"] for b in record["budgets"]] == ["target_bits=3", "budget.weight_size=1400B"]
    assert record["weight_bits_total"] == found.weight_bits_total <= 1400 * 8 * 1.01
