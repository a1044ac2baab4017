"""What a device pays for: every cost's total against a hand count on a two-layer network
(BitOps, weight size, activation memory, a latency table, the MicroNet score), the latency
table's file and its refusals, and budget values read from the config."""

import json

import pytest
from omegaconf import OmegaConf
from test_cost_models import ASPACE, WSPACE, _layers

from edmips.cost import budget_spec, latency_table
from edmips.cost import model as cost_models
from edmips.cost.micronet import CIFAR100, IMAGENET, micronet_score, reference_for
from edmips.records import arch
from edmips.search.budget import Budget, check_reachable, random_allocation

# conv 3->4 k3 p1 on 3x6x6: FLOPs 3888, 108 weights, 108 input elements; fc 4->2 reading the
# conv's 4x6x6 output (it pools it itself): FLOPs 8, 8 weights, 144 input elements
W, A = [2, 4], [4, 2]


def test_every_cost_totals_the_hand_count_of_two_layers():
    conv, fc = _layers()
    assert (conv.input_numel, fc.input_numel) == (108, 144)
    bitops, size = cost_models.get("bitops"), cost_models.get("weight_size")
    memory = cost_models.get("activation_memory")
    assert bitops.total([conv, fc], W, A) == 3888 * 2 * 4 + 8 * 4 * 2
    assert size.total([conv, fc], W, A) == 108 * 2 + 8 * 4
    total = memory.total([conv, fc], W, A)
    assert total == 108 * 4 + 144 * 2
    assert memory.stated_total(total, [conv, fc]) == total / (108 + 144)  # bits per activation
    assert memory.table(conv, WSPACE, ASPACE).tolist() == [[108 * a for a in ASPACE]] * 3


def test_the_micronet_score_is_the_challenge_rule_against_the_data_sets_reference():
    conv, fc = _layers()
    storage = (108 * 2 + 8 * 4) / 32
    mults = (3888 * max(2, 4) + 8 * max(4, 2)) / 32
    adds = 3888 + 8  # one 32-bit addition per multiply-accumulate
    imagenet = storage / 6.9e6 + (mults + adds) / 1.17e9
    assert micronet_score([conv, fc], W, A) == pytest.approx(imagenet, rel=1e-12)
    assert micronet_score([conv, fc], W, A, "imagenet") == pytest.approx(imagenet, rel=1e-12)
    cifar = storage / 36.5e6 + (mults + adds) / 10.49e9
    assert micronet_score([conv, fc], W, A, "cifar10") == pytest.approx(cifar, rel=1e-12)
    assert reference_for("cifar100") is CIFAR100 and reference_for("synthetic") is IMAGENET
    # a 32-bit network scores one per reference parameter and per reference operation pair
    assert micronet_score([conv, fc], [32, 32], [32, 32]) == pytest.approx(
        116 / 6.9e6 + 2 * 3896 / 1.17e9
    )


def test_an_arch_file_records_every_total_and_an_old_file_has_no_activation_total(tmp_path):
    conv, fc = _layers()
    space = {"wbits": list(WSPACE), "abits": list(ASPACE)}
    found = arch.build("resnet8", space, [conv, fc], W, A, data="cifar10")
    assert found.activation_bits_total == 108 * 4 + 144 * 2
    assert found.micronet_score == micronet_score([conv, fc], W, A, "cifar10")
    path = arch.save(found, tmp_path / "found.json")
    assert arch.load(path) == found
    d = json.loads(path.read_text())
    assert d["micronet_score"] == found.micronet_score
    for layer in d["layers"]:
        del layer["input_numel"]  # written before the input sizes were recorded
    d["activation_bits_total"] = 1
    old = arch.from_dict(d)
    assert old.activation_bits_total is None and old.micronet_score == found.micronet_score


def _table(tmp_path, rows, suffix=".csv"):
    path = tmp_path / f"latency{suffix}"
    if suffix == ".csv":
        path.write_text("layer,wbits,abits,latency_ms,device\n" + "".join(rows))
    else:
        path.write_text(json.dumps(rows))
    return path


def _ms(w, a):
    return 0.01 + 0.002 * max(w, a) + 0.0005 * w * a  # no product of the bits


def _full_table(tmp_path, suffix=".csv"):
    """The conv by name, the fc by its shape, at every (w, a) of the space."""
    conv, fc = _layers()
    entries = [(conv.name, w, a, 10 * _ms(w, a)) for w in WSPACE for a in ASPACE]
    entries += [(fc.shape_key, w, a, _ms(w, a)) for w in WSPACE for a in ASPACE]
    if suffix == ".csv":
        return _table(tmp_path, [f"{k},{w},{a},{ms!r},board\n" for k, w, a, ms in entries])
    rows = [dict(layer=k, wbits=w, abits=a, latency_ms=ms) for k, w, a, ms in entries]
    return _table(tmp_path, rows, suffix)


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_a_latency_table_totals_its_entries_in_ms(tmp_path, suffix):
    conv, fc = _layers()
    assert fc.shape_key == "linear:4:2" and conv.shape_key == "conv:3:4:3:1:1:6:6"
    settings = OmegaConf.create(
        {"name": "latency_table", "path": str(_full_table(tmp_path, suffix))}
    )
    cost = cost_models.get("latency_table").configure(settings)
    total = cost.total([conv, fc], W, A)
    assert total == pytest.approx(10 * _ms(2, 4) + _ms(4, 2))
    assert cost.stated_total(total, [conv, fc]) == pytest.approx(total)  # stated: the total, ms
    # a budget in ms: reachable between the fastest and slowest allocation, and met within 1%
    target = 0.5 * (10 * _ms(1, 2) + _ms(1, 2)) + 0.5 * (10 * _ms(4, 4) + _ms(4, 4))
    budget = Budget(cost, [conv, fc], [WSPACE] * 2, [ASPACE] * 2, target)
    check_reachable(budget)
    wbits, abits = random_allocation(budget, seed=0, tolerance=0.05)  # two layers: few choices
    assert cost.total([conv, fc], wbits, abits) == pytest.approx(target, rel=0.05)


def test_a_missing_latency_entry_is_refused_in_one_line_naming_it(tmp_path):
    conv, fc = _layers()
    rows = [f"conv,{w},{a},1.0,x\n" for w in WSPACE for a in ASPACE if (w, a) != (4, 2)]
    rows += [f"fc,{w},{a},0.5,x\n" for w in WSPACE for a in ASPACE]
    cost = latency_table.LatencyTable(latency_table.load(_table(tmp_path, rows)), "t.csv")
    budget = Budget(cost, [conv, fc], [WSPACE] * 2, [ASPACE] * 2, 2.0)
    with pytest.raises(ValueError) as e:
        check_reachable(budget)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("t.csv: no latency for layer 'conv' (shape conv:3:4:3:1:1:6:6)")
    assert "wbits=4 abits=2" in message


@pytest.mark.parametrize(
    "rows,message",
    [
        (["conv,2,2,-1,x\n"], r"line 2: latency_ms must be a number of ms >= 0, got '-1'"),
        (["conv,2,two,1,x\n"], r"line 2: abits must be a positive integer, got 'two'"),
        (["conv,2,2,1,x\n", "conv,2,2,2,x\n"], r"line 3: a second entry for conv at w=2 a=2"),
        ([], r"no entries"),
    ],
)
def test_a_bad_latency_file_is_refused_in_one_line(tmp_path, rows, message):
    with pytest.raises(ValueError, match=message) as e:
        latency_table.load(_table(tmp_path, rows))
    assert "\n" not in str(e.value)


def test_a_latency_table_needs_its_file_and_its_columns(tmp_path):
    unconfigured = cost_models.get("latency_table")
    with pytest.raises(ValueError, match=r"add cost.path=<file.csv\|.json>"):
        unconfigured.total(_layers(), W, A)
    with pytest.raises(ValueError, match=r"add cost.path="):
        unconfigured.configure(OmegaConf.create({"name": "latency_table", "path": None}))
    (tmp_path / "t.csv").write_text("name,w,a,ms\nconv,2,2,1\n")
    with pytest.raises(ValueError, match="no column layer, wbits, abits, latency_ms"):
        latency_table.load(tmp_path / "t.csv")
    with pytest.raises(ValueError, match=r"nowhere\.csv: no such file"):
        latency_table.load(tmp_path / "nowhere.csv")
    with pytest.raises(ValueError, match=r"a \.csv or a \.json file"):
        latency_table.load(tmp_path / "t.txt")
    (tmp_path / "t.json").write_text('[{"layer": "conv", "wbits": 2}]')
    with pytest.raises(ValueError, match="entry 0 lacks abits, latency_ms"):
        latency_table.load(tmp_path / "t.json")


def _specs(cost="bitops", target_bits=None, target_bitops=None, **group):
    return budget_spec.parse(group, target_bits, target_bitops, cost)


@pytest.mark.parametrize(
    "value,bits",
    [("2MiB", 2 * 8 * 2**20), ("512KiB", 512 * 8 * 1024), ("1.5kB", 12000), ("10B", 80)],
)
def test_a_memory_budget_reads_its_unit_and_selects_its_cost(value, bits):
    specs = _specs(weight_size=value)
    assert budget_spec.amount("weight_size", value) == bits
    assert budget_spec.counted_cost(specs, "bitops") == "weight_size"  # over the default bitops
    assert [(s.key, s.value, s.cost, s.amount) for s in specs] == [
        ("budget.weight_size", value, "weight_size", bits)
    ]
    conv, fc = _layers()
    target = specs[0].stated_target(cost_models.get("weight_size"), [conv, fc])
    assert target == bits / (108 + 8)  # bits per weight
    assert budget_spec.amount("activation_memory", 1000) == 1000  # a plain number: bits


def test_several_budgets_are_parsed_once_the_target_key_first():
    specs = _specs(target_bits=3, weight_size="2KiB", activation_memory=4096)
    assert [s.label for s in specs] == [
        "target_bits=3",
        "budget.weight_size=2KiB",
        "budget.activation_memory=4096",
    ]
    assert [s.cost for s in specs] == ["bitops", "weight_size", "activation_memory"]
    assert budget_spec.recorded_keys(specs) == {"weight_size": "2KiB", "activation_memory": 4096}
    assert budget_spec.recorded_keys(_specs(target_bits=3)) is None


@pytest.mark.parametrize(
    "keys,message",
    [
        (
            {"weight_size": "2Mb"},
            r"budget.weight_size=2Mb: unknown unit 'Mb'; write one of bits, B",
        ),
        ({"weight_size": "-2MiB"}, r"budget.weight_size=-2MiB: a budget must be positive"),
        ({"weight_size": "lots"}, r"not an amount of memory, such as 2MiB"),
        ({"latency_ms": 0, "cost": "latency_table"}, r"a budget must be positive"),
        ({"latency_ms": "5s", "cost": "latency_table"}, r"must be a number of ms"),
        ({"latency_ms": 5.0}, r"add cost=latency_table cost.path=<file>"),
        ({"bitops": True}, r"budget.bitops=True: must be a number of BitOps"),
        (
            {"weight_size": "2MiB", "bitops": 1e9, "cost": "activation_memory"},
            r"budget.bitops counts bitops, not cost=activation_memory",
        ),
        (
            {"weight_size": "2MiB", "target_bits": 2, "cost": "weight_size"},
            r"set budget.weight_size or target_bits, not both",
        ),
        ({"bitops": 1e9, "target_bitops": 1e9}, r"set budget.bitops or target_bitops, not both"),
        (
            {"weight_size": "2MiB", "cost": "activation_memory"},
            r"budget.weight_size counts weight_size, not cost=activation_memory",
        ),
        ({"target_bits": 2, "target_bitops": 1e9}, r"set target_bits or target_bitops, not both"),
        (
            {"target_bitops": 1e9, "cost": "weight_size"},
            r"target_bitops is a BitOps budget, not weight_size: set target_bits",
        ),
        ({"bitops": float("inf")}, r"budget.bitops=inf: not finite; a budget is a positive"),
    ],
)
def test_a_bad_budget_is_refused_in_one_line(keys, message):
    with pytest.raises(ValueError, match=message) as e:
        _specs(**keys)
    assert "\n" not in str(e.value)
