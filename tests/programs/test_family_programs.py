"""quant=qatsim, quant=learned and the defaults (edmips's quantizers in the search,
their int8 forms in the retrain) through the programs: a search over the family's bit-widths,
the retrain of what it found (the first conv and the classifier the family's too), and an
integer export that agrees exactly; the records name the quantizers the run built."""

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edmips.export.cli import load_retrained
from edmips.export.cli import main as export_main
from edmips.models import create_model
from edmips.nn import quantizable_names
from edmips.nn.convert import first_and_last
from edmips.nn.fold import conv_bn_pairs, folded_batch_norms
from edmips.nn.layers import is_depthwise
from edmips.nn.policy import micronet
from edmips.programs.retrain import retrain
from edmips.programs.search import search
from edmips.quant import registry
from edmips.records import arch

# The family's overrides, and the (activation, weight, signed) quantizers its retrain builds
FAMILIES = {
    "qatsim": (["quant=qatsim", "deploy=float"], ("ema_relu", "maxabs", "ema")),
    "learned": (["quant=learned", "deploy=float"], ("lsq", "maxabs", "lsq_signed")),
    # the defaults: the search in edmips's own quantizers, the retrain in their int8 forms
    "edmips": ([], ("hwgq_int8", "gauss_int8", "pow2")),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_a_family_searches_retrains_and_exports_exactly(
    search_cfg, retrain_cfg, family, tmp_path, caplog
):
    overrides, (activation, weight, signed) = FAMILIES[family]
    built = registry.int8_form if family == "edmips" else str  # what the retrain makes of them
    space = ["space.wbits=[2,3,4]", "space.abits=[2,3,4]", "target_bits=3"]
    cfg = search_cfg(*overrides, *space)
    search(cfg)
    found = arch.load(tmp_path / "found.json")
    searched = [(built(layer.wquant), built(layer.aquant)) for layer in found.layers]
    assert {w for w, _ in searched} == {weight}
    assert {a for _, a in searched} <= {activation, signed, "image"}

    run = retrain_cfg(f"arch={tmp_path / 'found.json'}", *overrides)
    run.output_dir = str(tmp_path / "retrain")
    with caplog.at_level(logging.WARNING):
        metrics = retrain(run)
    assert not [r for r in caplog.records if "names the quantizers" in r.message]
    assert metrics["prediction_agreement"] == metrics["qdq_agreement"] == 1.0
    assert metrics["quant"] == {"activation": activation, "weight": weight, "signed": signed}
    if getattr(registry.get(weight), "int8_of", ""):  # onnxruntime's int8 kernels, in metrics.json
        written = json.loads((tmp_path / "retrain" / "metrics.json").read_text())
        assert metrics["int8_agreement"] == written["int8_agreement"] == 1.0
        int8 = onnx.load(str(tmp_path / "retrain" / "model_int8.onnx"))
        convs = {n.op_type for n in int8.graph.node} & {"Conv", "ConvInteger", "QLinearConv"}
        assert convs == {"QLinearConv"}  # the first conv's and the classifier's too
    # The first conv and the classifier, outside the architecture, are the family's too.
    model, _ = load_retrained(tmp_path / "retrain")
    ends = [model.get_submodule(name).weight_quant for name in first_and_last(model)]
    assert {type(q).name for q in ends} == {weight}
    state = torch.load(tmp_path / "retrain" / "checkpoints" / "last.ckpt", weights_only=False)
    tracked = {"learned": "input_quant.step", "edmips": "quant.running_max"}
    assert any(
        k.endswith(tracked.get(family, "input_quant.running_max")) for k in state["state_dict"]
    )
    used = arch.load(tmp_path / "retrain" / "arch.json")
    assert [(layer.wquant, layer.aquant) for layer in used.layers] == searched
    # The checkpoint alone rebuilds the same family's network: the same integers.
    export_main([str(tmp_path / "retrain"), "--out", str(tmp_path / "again")])
    first = np.load(tmp_path / "retrain" / "integer" / "arrays.npz")
    again = np.load(tmp_path / "again" / "integer" / "arrays.npz")
    assert sorted(first) == sorted(again) and all(np.array_equal(first[k], again[k]) for k in first)


def test_a_retrain_in_another_family_records_what_it_built_and_says_so(
    search_cfg, retrain_cfg, tmp_path, caplog
):
    search(search_cfg("quant=learned", "space.wbits=[2,3,4]", "target_bits=3"))
    run = retrain_cfg(f"arch={tmp_path / 'found.json'}")  # quant=edmips, the default
    run.output_dir = str(tmp_path / "retrain")
    with caplog.at_level(logging.WARNING):
        retrain(run)
    used = arch.load(tmp_path / "retrain" / "arch.json")
    assert {layer.wquant for layer in used.layers} == {"gauss_int8"}  # deploy=int8, the default
    warned = [r.message for r in caplog.records if "names the quantizers" in r.message]
    assert len(warned) == 1 and "gauss_int8" in warned[0]


def test_a_folded_retrain_exports_exactly_and_its_checkpoint_refolds(retrain_cfg, tmp_path):
    cfg = retrain_cfg(
        "arch=uniform",
        "wbits=4",
        "abits=4",
        "quant=qatsim",
        "deploy=float",
        "bn_fold=true",
        "bn_freeze_epoch=1",
    )
    metrics = retrain(cfg)
    assert metrics["bn_fold"] is True and metrics["quant"]["activation"] == "ema_relu"
    assert metrics["prediction_agreement"] == metrics["qdq_agreement"] == 1.0
    out = Path(cfg.output_dir)
    rebuilt, _ = load_retrained(out)
    assert len(folded_batch_norms(rebuilt)) == len(conv_bn_pairs(rebuilt)) > 0
    export_main([str(out), "--out", str(tmp_path / "again")])
    first = np.load(out / "integer" / "arrays.npz")
    again = np.load(tmp_path / "again" / "integer" / "arrays.npz")
    assert all(np.array_equal(first[k], again[k]) for k in first)


@pytest.mark.parametrize("override", ["bn_fold=maybe", "bn_freeze_epoch=-1"])
def test_bad_fold_settings_are_refused_in_one_line(retrain_cfg, override):
    with pytest.raises(ValueError, match=f"^{override.split('=')[0]}") as e:
        retrain(retrain_cfg("arch=uniform", override))
    assert "\n" not in str(e.value)


def test_the_micronet_policy_sets_its_bits_on_every_layer():
    torch.manual_seed(0)
    model = create_model("tv_mobilenet_v2", num_classes=10)
    bits = micronet(model)
    first, last = first_and_last(model)
    assert set(bits) == set(quantizable_names(model)) and bits[first][0] == 8
    depthwise = [n for n in bits if is_depthwise(model.get_submodule(n))]
    assert len(depthwise) == 17 and all(bits[n] == (5, 5) for n in depthwise)
    others = [n for n in bits if n != first and n not in depthwise]
    assert bits[last] == (4, 4) and {bits[n][0] for n in others} == {4}
    # an input that arrives quantized (a signed tensor) is read at 8 bits, the others at 4
    assert {bits[n][1] for n in others} == {4, 8}


def test_a_micronet_retrain_records_its_policy(retrain_cfg):
    cfg = retrain_cfg("arch=micronet", "quant=learned")
    metrics = retrain(cfg)
    assert metrics["kind"] == "micronet" and metrics["prediction_agreement"] == 1.0
    used = arch.load(Path(cfg.output_dir) / "arch.json")
    assert [(layer.wbits, layer.abits) for layer in used.layers][0] == (8, 8)
    assert {(layer.wbits, layer.abits) for layer in used.layers[1:]} == {(4, 4)}
