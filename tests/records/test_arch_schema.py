"""Schema 2 names each layer's quantizers; a schema-1 file still loads, as edmips's family."""

import json

import pytest

from edmips.cost.layers import LayerCost
from edmips.programs.retrain import check_matches
from edmips.quant import ActivationQuantizer, register
from edmips.records import arch

COSTS = [LayerCost("conv1", "conv", 1000, 90, 100, ()), LayerCost("l2", "conv", 3000, 270, 100, ())]
SPACE = {"wbits": [1, 2, 3, 4], "abits": [2, 3, 4]}


def _arch(quantizers=None):
    return arch.build("resnet8", SPACE, COSTS, [2, 3], [8, 4], None, None, quantizers)


def test_schema_2_records_the_quantizers_by_name(tmp_path):
    a = _arch([("gauss", "image"), ("gauss", "hwgq")])
    d = json.loads(arch.save(a, tmp_path / "found.json").read_text())
    assert d["schema"] == 2
    assert [(x["wquant"], x["aquant"]) for x in d["layers"]] == [
        ("gauss", "image"),
        ("gauss", "hwgq"),
    ]
    assert arch.load(tmp_path / "found.json") == a


def test_a_schema_1_file_loads_as_the_edmips_family(tmp_path):
    d = _arch().to_dict()
    d["schema"] = 1
    for layer in d["layers"]:
        del layer["wquant"], layer["aquant"]
    (tmp_path / "old.json").write_text(json.dumps(d))
    a = arch.load(tmp_path / "old.json")
    assert [(x.wquant, x.aquant) for x in a.layers] == [("gauss", "hwgq")] * 2
    assert a.bitops == _arch().bitops
    check_matches(a, "resnet8", COSTS, quantized_inputs={"conv1"})


def test_schema_2_needs_the_names_and_registered_ones(tmp_path):
    d = _arch().to_dict()
    del d["layers"][0]["wquant"]
    with pytest.raises(arch.ArchError, match="layer 0 lacks wquant"):
        arch.from_dict(d)
    d = _arch().to_dict()
    d["layers"][1]["aquant"] = "nope"
    with pytest.raises(arch.ArchError, match="layer 'l2': aquant='nope' is not a registered"):
        arch.from_dict(d)


@register("narrow_test")
class _Narrow(ActivationQuantizer):
    supported_bits = (2,)


def test_bits_are_checked_against_the_layer_quantizer():
    a = _arch([("gauss", "image"), ("gauss", "narrow_test")])
    with pytest.raises(arch.ArchError, match=r"abits=4, but the integer export takes \[2\]"):
        check_matches(a, "resnet8", COSTS, quantized_inputs={"conv1"})
    check_matches(_arch(), "resnet8", COSTS, quantized_inputs={"conv1"})
