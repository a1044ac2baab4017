"""Budgets in what a device pays for, end to end on the demo (CPU, tiny network): a search in
weight size and one in a measured latency table land within 1%, as does arch=random in weight
size; a missing latency entry and bad budget values are refused before anything trains."""

import pytest

from edmips.cost import layers as cost_layers
from edmips.cost import model as cost_models
from edmips.models import create_model
from edmips.nn import default_searched
from edmips.programs.builders import build_datamodule
from edmips.programs.checks import check_retrain
from edmips.programs.retrain import resolve_arch
from edmips.programs.search import search
from edmips.records import arch
from edmips.search.rediscretize import rediscretize


def _tiny_layers():
    model = create_model("resnet_tiny", num_classes=10)
    names = default_searched(model)
    return [c for c in cost_layers.measure(model, (3, 32, 32)) if c.name in names]


def test_a_search_in_weight_size_lands_within_one_percent(search_cfg, tmp_path):
    params = sum(c.params for c in _tiny_layers())
    assert params == 4736
    budget_bits = 1480 * 8  # every quantized weight in 1480 bytes
    # the unsearched first conv (3 -> 8, 3x3) and classifier (16 -> 10), at 8 bits
    fixed = (3 * 8 * 9 + 16 * 10) * 8
    found = search(search_cfg("budget.weight_size=1480B"))["arch"]
    assert found.fixed_weight_bits == fixed
    searched_bits = found.weight_bits_total - fixed
    assert abs(searched_bits - (budget_bits - fixed)) <= 0.01 * (budget_bits - fixed)
    assert found.extra["cost"] == "weight_size" and found.extra["budget"] == {
        "weight_size": "1480B"
    }
    # the searched layers' share, in bits per weight: 1.86
    assert found.extra["target_bits"] == pytest.approx((budget_bits - fixed) / params)
    saved = arch.load(tmp_path / "found.json")
    assert saved.activation_bits_total == found.activation_bits_total > 0
    assert saved.micronet_score == found.micronet_score > 0


def _ms(layer, w, a):
    """A device whose time is no product of the bits: a fixed part, the wider operand, both."""
    return layer.flops / 1e6 * (0.2 + 0.05 * max(w, a) + 0.01 * w * a)


def _latency_csv(tmp_path, layers, skip=None):
    """Entries by shape, and one layer by its name (a name wins over its shape)."""
    rows, seen = ["layer,wbits,abits,latency_ms\n"], set()
    for layer in layers:
        key = layer.name if layer.name.endswith("downsample") else layer.shape_key
        if key in seen:
            continue  # stages.0.0.conv1 and conv2 share a shape: one entry serves both
        seen.add(key)
        for w in (1, 2, 3, 4):
            for a in (2, 3, 4, 8):
                if (layer.name, w, a) != skip:
                    rows.append(f"{key},{w},{a},{_ms(layer, w, a)!r}\n")
    path = tmp_path / "latency.csv"
    path.write_text("".join(rows))
    return path


def test_a_search_in_a_latency_table_lands_within_one_percent(search_cfg, tmp_path):
    layers = _tiny_layers()
    path = _latency_csv(tmp_path, layers)
    fastest = sum(_ms(c, 1, 2) for c in layers)
    slowest = sum(_ms(c, 4, 4) for c in layers)
    target = round(fastest + 0.4 * (slowest - fastest), 4)
    cfg = search_cfg("cost=latency_table", f"cost.path={path}", f"budget.latency_ms={target}")
    found = search(cfg)["arch"]
    spent = sum(_ms(c, x.wbits, x.abits) for c, x in zip(layers, found.layers, strict=True))
    assert abs(spent - target) <= 0.01 * target
    assert found.extra["cost"] == "latency_table" and found.extra["target_bits"] == target
    assert found.extra["latency_ms"] == pytest.approx(spent)  # what the report shows
    assert found.extra["latency_table"] == str(path.resolve())
    # found.json's shape keys and table path: its selectors discretized again on that table
    again = rediscretize(tmp_path, 2, "budget", target_bits=0.8 * target)
    spent = sum(_ms(c, x.wbits, x.abits) for c, x in zip(layers, again.layers, strict=True))
    assert abs(spent - 0.8 * target) <= 0.01 * 0.8 * target


def test_a_missing_latency_entry_is_refused_before_training(search_cfg, tmp_path):
    path = _latency_csv(tmp_path, _tiny_layers(), skip=("stages.1.0.downsample", 3, 4))
    with pytest.raises(ValueError) as e:
        search(search_cfg("cost=latency_table", f"cost.path={path}", "mu=0.01"))  # no budget
    assert "\n" not in str(e.value)
    assert "no latency for layer 'stages.1.0.downsample' (shape conv:8:16:1:2:1:32:32) at " in (
        str(e.value)
    )
    assert "wbits=3 abits=4" in str(e.value)
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "found.json").exists()


def test_arch_random_in_weight_size_lands_within_one_percent(retrain_cfg):
    def found(seed):
        cfg = retrain_cfg("arch=random", "budget.weight_size=1480B", f"seed={seed}")
        return resolve_arch(cfg, check_retrain(cfg), build_datamodule(cfg))[1]

    first, other = found(0), found(1)
    share = 1480 * 8 - first.fixed_weight_bits  # what the searched layers may take
    assert first.fixed_weight_bits == (3 * 8 * 9 + 16 * 10) * 8
    assert abs(first.weight_bits_total - first.fixed_weight_bits - share) <= 0.01 * share
    assert first.bits() != other.bits() and first.extra["cost"] == "weight_size"
    assert first.extra["budget"] == {"weight_size": "1480B"}
    size = cost_models.get("weight_size")
    costs = first.costs()
    assert first.extra["target_bits"] == pytest.approx(size.stated_total(share, costs))


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["budget.weight_size=2Mb"], "budget.weight_size=2Mb: unknown unit 'Mb'"),
        (["budget.weight_size=-1KiB"], "budget.weight_size=-1KiB: a budget must be positive"),
        (
            ["cost=weight_size", "budget.weight_size=1KiB", "target_bits=2"],
            "set budget.weight_size or target_bits",
        ),
        (
            ["budget.weight_size=1KiB", "budget.bitops=1e6"],
            "budget.bitops=1000000.0 cannot be met: its cheapest allocation spends 1.414",
        ),
        (["budget.latency_ms=2"], "add cost=latency_table cost.path=<file>"),
        (["cost=latency_table", "budget.latency_ms=2"], "add cost.path=<file.csv|.json>"),
        (["budget.weight_size=16KiB"], "budget.weight_size=16KiB: target of 27.041 bits per"),
    ],
)
def test_a_bad_budget_is_refused_in_one_line_before_training(
    search_cfg, tmp_path, overrides, message
):
    with pytest.raises(ValueError, match=message.replace("|", r"\|").replace(".", r"\.")) as e:
        search(search_cfg(*overrides))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "checkpoints").exists()


def test_arch_random_with_a_bad_budget_is_refused(retrain_cfg):
    from edmips.programs.retrain import retrain

    with pytest.raises(ValueError, match="budget.weight_size=2 MiB and a half: not an amount"):
        retrain(retrain_cfg("arch=random", "budget.weight_size='2 MiB and a half'"))
