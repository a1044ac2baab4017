"""arch=float trains the float network and writes its weights; init=float starts quantization-
aware training from them; the report lists the float run as its own kind."""

import json
import math

import pytest
import torch
from conftest import make_config

from edmips.core import rundir
from edmips.export.cli import main as export_main
from edmips.models import create_model
from edmips.models.weights import network_state
from edmips.programs.builders import build_datamodule
from edmips.programs.checks import check_retrain
from edmips.programs.retrain import resolve_arch, retrain
from edmips.report import collect, write_report


def test_float_run_writes_loadable_weights_and_quantized_training_starts_from_them(tmp_path):
    cfg = make_config("retrain", tmp_path / "float", ["arch=float", "trainer.max_epochs=1"])
    metrics = retrain(cfg)
    out = tmp_path / "float"
    written = json.loads((out / "metrics.json").read_text())
    assert written == metrics and written["kind"] == "float" and written["arch"] == "float"
    assert 0 <= written["test_acc"] <= written["test_acc_top5"] <= 1
    assert written["test_images"] == cfg.data.num_test and written["integer_export"] is False
    assert written["test_acc_integer"] is None and written["prediction_agreement"] is None
    assert written["equivalent_bits"] == 32.0
    assert not (out / "integer").exists() and not (out / "model.onnx").exists()
    with pytest.raises(SystemExit, match=r"^error: .*last\.ckpt: the float network \(arch=float\)"):
        export_main([str(out)])

    # The file loads into the same model: its parameters are the trained network's.
    weights = out / "weights.pt"
    trained = network_state(rundir.load_checkpoint(out / rundir.CHECKPOINT)["state_dict"])
    loaded = create_model("resnet_tiny", num_classes=10, weights=str(weights))
    for name, value in loaded.named_parameters():
        assert torch.equal(value, trained[name]), name
    assert not torch.equal(trained["conv1.weight"], create_model("resnet_tiny").conv1.weight)

    # init=float: the quantized network starts from the file's weights, at the asked bits.
    qat = make_config(
        "retrain",
        tmp_path / "qat",
        ["arch=uniform", "wbits=4", "abits=4", "init=float", f"model.weights={weights}"],
    )
    model, found = resolve_arch(qat, check_retrain(qat), build_datamodule(qat))
    file = torch.load(weights, weights_only=True)
    # deploy=int8 (the default): the image's scale a power of two, the first conv's weights
    # scaled by the inverse change; the rest as the file holds them
    change = model.conv1.weight / file["conv1.weight"]  # new scale / old, one number
    assert torch.allclose(change, change.flatten()[0]) and 2**-0.5 <= change.flatten()[0] <= 2**0.5
    assert math.log2(model.input_quant.scale).is_integer()
    assert all(
        torch.equal(model.state_dict()[k], v) for k, v in file.items() if k != "conv1.weight"
    )
    assert {(layer.wbits, layer.abits) for layer in found.layers} == {(4, 4)}
    assert model.get_submodule("stages.0.0.conv1").wbits == 4 and model.stages[0].quant.bits == 8

    # The report lists it as its own kind, the ceiling, beside the quantized networks.
    runs = collect([out])
    assert [(r.kind, r.network, r.budget) for r in runs] == [("float", "float", "float")]
    assert runs[0].test_acc == written["test_acc"]
    paths = write_report(runs, tmp_path / "report")
    assert "| float | float | - | resnet_tiny |" in paths["md"].read_text()
    assert paths["pareto"].stat().st_size > 0
