"""Inputs that were read as something else (issue 32): an arch file's data, a latency table
with a byte-order mark, a history whose selectors are no probabilities, a budget the
rediscretized architecture cannot land within 1% of."""

import json
import logging

import pytest
import torch
from test_bad_inputs import _tiny_arch

from edmips.cost import latency_table
from edmips.data import SyntheticDataModule
from edmips.models import create_model
from edmips.nn import default_searched
from edmips.programs.checks import check_retrain
from edmips.programs.retrain import resolve_arch
from edmips.records import arch
from edmips.records import history as history_file
from edmips.search.rediscretize import main as rediscretize_main


def _found_json(tmp_path, data="cifar10"):
    """A resnet_tiny arch file recording the data it was searched on."""
    path = tmp_path / "found.json"
    path.write_text(json.dumps({**_tiny_arch(), "data": data}))
    return path


def _synthetic():
    return SyntheticDataModule(num_train=200, val_size=100, num_test=100, batch_size=50)


def test_an_arch_file_of_other_data_needs_its_data_named(retrain_cfg, tmp_path):
    path = _found_json(tmp_path)
    cfg = retrain_cfg(f"arch={path}")  # data: the config's default, synthetic
    with pytest.raises(ValueError) as e:
        resolve_arch(cfg, check_retrain(cfg), _synthetic())
    assert str(e.value) == (
        f"arch={path} was searched on cifar10, this run's data is the config's default "
        "synthetic: add data=cifar10 (or data=synthetic to use it)"
    )


def test_an_arch_file_of_data_no_config_names_lists_the_data_configs(retrain_cfg, tmp_path):
    path = _found_json(tmp_path, data="banana")  # hand-edited, or an ImageFolder run's
    cfg = retrain_cfg(f"arch={path}")
    with pytest.raises(ValueError) as e:
        resolve_arch(cfg, check_retrain(cfg), _synthetic())
    assert str(e.value).endswith(
        "synthetic: add data=<one of cifar10, imagenet, synthetic> (or data=synthetic to use it)"
    )


def test_the_data_the_command_line_chose_is_used_and_said(retrain_cfg, tmp_path, caplog):
    path = _found_json(tmp_path)
    cfg = retrain_cfg(f"arch={path}", "data=synthetic")
    with caplog.at_level(logging.INFO, logger="edmips.programs.retrain"):
        model, found = resolve_arch(cfg, check_retrain(cfg), _synthetic())
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert lines == [f"arch={path} was searched on cifar10; this run uses data=synthetic, as asked"]
    assert found.model == model.name == "resnet_tiny"


def test_an_arch_file_of_the_runs_data_is_built_without_a_word(retrain_cfg, tmp_path, caplog):
    path = _found_json(tmp_path, data="synthetic")
    cfg = retrain_cfg(f"arch={path}")  # model=resnet_tiny, as the file's
    with caplog.at_level(logging.INFO, logger="edmips.programs.retrain"):
        resolve_arch(cfg, check_retrain(cfg), _synthetic())
    assert [r.getMessage() for r in caplog.records] == []


def test_the_arch_files_model_is_built_and_said(retrain_cfg, tmp_path, caplog):
    path = _found_json(tmp_path, data="synthetic")
    cfg = retrain_cfg(f"arch={path}", "model=resnet8")
    with caplog.at_level(logging.INFO, logger="edmips.programs.retrain"):
        model, _ = resolve_arch(cfg, check_retrain(cfg), _synthetic())
    assert model.name == "resnet_tiny"
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, f"arch={path} is a resnet_tiny network: built instead of model=resnet8")
    ]


def test_a_latency_table_with_a_byte_order_mark_is_read(tmp_path):
    rows = "layer,wbits,abits,latency_ms\nfc,2,2,0.5\nfc,4,4,1.5\n"
    path = tmp_path / "latency.csv"
    path.write_bytes(b"\xef\xbb\xbf" + rows.encode())  # as Excel saves "CSV UTF-8"
    assert latency_table.load(path) == {("fc", 2, 2): 0.5, ("fc", 4, 4): 1.5}
    as_json = tmp_path / "latency.json"
    entries = [{"layer": "fc", "wbits": 2, "abits": 2, "latency_ms": 0.5}]
    as_json.write_bytes(b"\xef\xbb\xbf" + json.dumps(entries).encode())
    assert latency_table.load(as_json) == {("fc", 2, 2): 0.5}


def _search_run(tmp_path, probs_w=None, layers=None):
    """A finished search's found.json and history.json (epochs 0 and 1), without the search:
    resnet_tiny's searched layers (or the first `layers` of them) over wbits 1-4 and abits 2-4,
    the epoch-1 selectors leaning to 4 bits."""
    d = _tiny_arch()
    found = arch.from_dict({**d, "layers": d["layers"][:layers]})
    arch.save(found, tmp_path / "found.json")
    layers = len(found.layers)
    uniform_w, uniform_a = [0.25] * 4, [1 / 3] * 3
    entry = {"mu": 0.01, "sharpness": 1.0, "expected_bits": 3.0, "val_acc": 0.5}
    history = [
        {**entry, "epoch": 0, "probs_w": [uniform_w] * layers, "probs_a": [uniform_a] * layers},
        {
            **entry,
            "epoch": 1,
            "probs_w": probs_w or [[0.1, 0.2, 0.3, 0.4]] * layers,
            "probs_a": [[0.2, 0.3, 0.5]] * layers,
        },
    ]
    history_file.save(history, tmp_path / "history.json")
    return found


def test_a_history_whose_probabilities_do_not_sum_to_one_is_refused(tmp_path):
    found = _search_run(tmp_path)
    layers = len(found.layers)
    _search_run(tmp_path, probs_w=[[0.5, 0.5, 0.5, 0.5]] * layers)  # sums to 2
    name = found.layers[0].name
    with pytest.raises(ValueError) as e:
        history_file.load(tmp_path / "history.json", found)
    assert str(e.value) == (
        f"{tmp_path / 'history.json'}: entry 1: probs_w of layer {name!r} sums to 2, not 1"
    )
    out = tmp_path / "e1.json"
    with pytest.raises(SystemExit, match="sums to 2, not 1$"):
        rediscretize_main([str(tmp_path), "--epoch", "1", "--out", str(out)])
    assert not out.exists()


def test_a_float32_softmax_sums_to_one_closely_enough(tmp_path):
    found = _search_run(tmp_path)
    probs = torch.softmax(torch.randn(len(found.layers), 4), -1).tolist()
    _search_run(tmp_path, probs_w=probs)
    assert history_file.load(tmp_path / "history.json", found)[1]["probs_w"] == probs


def _budget(tmp_path, target):
    out = tmp_path / f"b{target}.json"
    args = ["--epoch", "1", "--discretize", "budget", "--target-bits", target]
    return arch.load(rediscretize_main([str(tmp_path), *args, "--out", str(out)]))


def test_a_budget_landing_further_than_one_percent_off_is_said(tmp_path, caplog):
    _search_run(tmp_path, layers=2)  # two layers' choices: few costs to land on
    with caplog.at_level(logging.WARNING, logger="edmips.search.rediscretize"):
        within = _budget(tmp_path, "2")
    assert within.equivalent_bits == pytest.approx(2, rel=0.01) and caplog.records == []
    with caplog.at_level(logging.WARNING, logger="edmips.search.rediscretize"):
        off = _budget(tmp_path, "2.3")
    miss = abs(off.equivalent_bits - 2.3) / 2.3
    assert miss > 0.01  # the nearest the two layers reach
    assert [r.getMessage() for r in caplog.records] == [
        "no allocation within 1% of the target 2.3 equivalent bits was found: the nearest, "
        f"{off.equivalent_bits:.4g}, is {100 * miss:.2f}% off"
    ]


def test_the_tiny_arch_covers_resnet_tiny_s_searched_layers():
    model = create_model("resnet_tiny", num_classes=10)
    assert [x.name for x in arch.from_dict(_tiny_arch()).layers] == default_searched(model)
