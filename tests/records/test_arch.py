import json

import pytest

from edmips.cost.layers import LayerCost
from edmips.programs.retrain import check_matches
from edmips.records import arch

COSTS = [
    LayerCost("l1", "conv", 1000, 90, 100, ()),
    LayerCost("l2", "conv", 3000, 270, 100, ()),
    LayerCost("fc", "linear", 40, 40, 10, ()),
]
SPACE = {"wbits": [1, 2, 3, 4], "abits": [2, 3, 4]}


def _arch(**meta):
    return arch.build(
        "resnet8",
        SPACE,
        COSTS,
        [1, 2, 4],
        [2, 3, 4],
        [[0.7, 0.1, 0.1, 0.1]] * 3,
        [[0.5, 0.3, 0.2]] * 3,
        mu=0.02,
        data="synthetic",
        val_acc=0.61,
        **meta,
    )


def test_totals_are_computed_from_the_layers():
    a = _arch()
    assert a.bitops == 1000 * 1 * 2 + 3000 * 2 * 3 + 40 * 4 * 4
    assert a.equivalent_bits == pytest.approx((a.bitops / 4040) ** 0.5)
    assert a.weight_bits_total == 90 + 540 + 160
    assert a.activation_bits_total == 100 * 2 + 100 * 3 + 10 * 4


def test_round_trip_keeps_everything(tmp_path):
    a = _arch(target_bits=2.0, final_mu=0.3)
    path = arch.save(a, tmp_path / "run" / "found.json")
    assert arch.load(path) == a
    d = json.loads(path.read_text())
    for key in (
        "schema",
        "model",
        "space",
        "layers",
        "bitops",
        "equivalent_bits",
        "weight_bits_total",
        "activation_bits_total",
        "micronet_score",
        "mu",
        "data",
        "val_acc",
        "target_bits",
        "final_mu",
    ):
        assert key in d
    assert set(d["layers"][0]) == {*arch.LAYER_KEYS, *arch.OPTIONAL_LAYER_KEYS}
    assert not list(tmp_path.glob("run/.*"))  # no temporary file left behind


def _write(tmp_path, text):
    p = tmp_path / "found.json"
    p.write_text(text if isinstance(text, str) else json.dumps(text))
    return p


def _good():
    return _arch().to_dict()


def _mutate(**changes):
    d = _good()
    for key, value in changes.items():
        if value is None:
            d.pop(key)
        else:
            d[key] = value
    return d


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (_mutate(schema=7), "schema 7 is not supported"),
        (_mutate(layers=None), "missing 'layers'"),
        (_mutate(space={"wbits": [2]}), "'space' must be"),
        (_mutate(layers=[]), "'layers' must be a non-empty list"),
        (_mutate(layers=[{"name": "l1"}]), "layer 0 lacks type, flops"),
        (_mutate(bitops=5), "'bitops' 5 does not match its layers"),
    ],
)
def test_each_bad_file_gets_a_one_line_error(tmp_path, content, message):
    with pytest.raises(arch.ArchError, match=message) as e:
        arch.load(_write(tmp_path, content))
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def _layer(**changes):
    d = _good()
    d["layers"][1].update(changes)
    return d


@pytest.mark.parametrize(
    "content,message",
    [
        (_mutate(mu="x"), "mu='x' is not a non-negative number"),
        (_mutate(target_bits="two"), "target_bits='two' is not a positive number"),
        (_mutate(target_bits=0), "target_bits=0 is not a positive number"),
        (_mutate(val_acc=61), "val_acc=61 is not a fraction in [0, 1]"),
        (_mutate(test_acc=[0.5]), "test_acc=[0.5] is not a fraction in [0, 1]"),
        (_mutate(model=8), "model=8 is not a string"),
        (_mutate(data=["cifar10"]), "data=['cifar10'] is not a string"),
        (_mutate(cost="memory"), "cost='memory' is not a cost (activation_memory, bitops"),
        (_mutate(shared_weights="yes"), "shared_weights='yes' is not true or false"),
        (_mutate(epoch=-1), "epoch=-1 is not a non-negative integer"),
        (_mutate(budget="64KiB"), "budget='64KiB' is not a JSON object"),
        (_mutate(budgets=[{"budget": "b", "cost": "bitops"}]), 'is not a list of {"budget"'),
        (_mutate(equivalent_bits="2"), "equivalent_bits='2' is not a non-negative number"),
        (_mutate(model=None), "missing 'model'"),
        (_layer(name=3), "layer 1: name=3 is not a string"),
    ],
)
def test_every_field_of_a_file_is_checked(tmp_path, content, message):
    with pytest.raises(arch.ArchError) as e:
        arch.load(_write(tmp_path, content))
    assert message in str(e.value)
    assert str(e.value).startswith(f"{tmp_path / 'found.json'}: ") and "\n" not in str(e.value)


def test_a_field_nothing_reads_is_kept(tmp_path):
    found = arch.load(_write(tmp_path, {**_good(), "note": {"free": "text"}}))
    assert found.extra["note"] == {"free": "text"}


def test_bit_width_outside_the_space_is_named(tmp_path):
    d = _good()
    d["layers"][1]["wbits"] = 8
    with pytest.raises(
        arch.ArchError, match=r"layer 'l2': wbits=8 is outside the space \[1, 2, 3, 4\]"
    ):
        arch.load(_write(tmp_path, d))


def test_unknown_model_and_missing_file(tmp_path):
    with pytest.raises(arch.ArchError, match="unknown model 'resnet8'"):
        arch.load(_write(tmp_path, _good()), known_models=["resnet20"])
    with pytest.raises(arch.ArchError, match="no such file"):
        arch.load(tmp_path / "absent.json")


def test_a_file_must_match_the_model_layers():
    a = _arch()
    check_matches(a, "resnet8", COSTS)
    with pytest.raises(arch.ArchError, match="made for model 'resnet8', not 'resnet20'"):
        check_matches(a, "resnet20", COSTS)
    with pytest.raises(arch.ArchError, match="3 layers, but resnet8 has 2 searchable layers"):
        check_matches(a, "resnet8", COSTS[:2])
    renamed = [COSTS[0], LayerCost("other", "conv", 3000, 270, 100, ()), COSTS[2]]
    with pytest.raises(arch.ArchError, match="layer 'l2' where resnet8 has 'other'"):
        check_matches(a, "resnet8", renamed)
