"""bench/deploy.py: one line per form (edmips's and onnxruntime's quantize_static of the same
float network) with its latencies and file size, then per network the agreements (1.0 with the
integer reference for edmips's forms), the agreements with the float network and the ratios;
--quant picks the family whose network is exported, --deploy its quantizers or their int8
forms."""

import json
from pathlib import Path

import onnx
import pytest
from conftest import load_bench

FORMS = ["float", "int8", "ort_qdq", "ort_qop", "qdq"]


def run_deploy(capsys, out: Path, *options: str) -> tuple[dict, dict]:
    module = load_bench("deploy")
    module.main(
        ["--model", "resnet_tiny:16", "--runs", "1", "--check-images", "4", "--threads", "1"]
        + ["--out", str(out), *options]
    )
    out_lines = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in out_lines if line.startswith("{")]  # exporter prints
    forms = {line["form"]: line for line in lines if "form" in line}
    (summary,) = [line for line in lines if "agreement" in line]
    return forms, summary


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def test_deploy_prints_every_form_and_agreements(capsys, tmp_path):
    forms, summary = run_deploy(capsys, tmp_path / "edmips")
    assert sorted(forms) == FORMS and {line["quant"] for line in forms.values()} == {"edmips"}
    assert all(line["ms_b1"] > 0 and line["ms_b64"] > 0 for line in forms.values())
    assert set(summary["agreement"].values()) == {1.0}  # the integer runtime, qdq and int8
    agreements = summary["float_agreement"]
    assert sorted(agreements) == ["fake_quant", "int8", "ort_qdq", "ort_qop", "qdq"]
    assert all(0.0 <= a <= 1.0 for a in agreements.values())
    assert sorted(summary["float_over"]) == ["int8", "ort_qdq", "ort_qop", "qdq"]
    ort_qop = summary["float_over"]["ort_qop"]
    assert ort_qop["size"] == pytest.approx(forms["float"]["mb"] / forms["ort_qop"]["mb"], rel=0.1)
    assert ort_qop["b64"] == pytest.approx(
        forms["float"]["ms_b64"] / forms["ort_qop"]["ms_b64"], rel=0.1
    )
    assert summary["bundle_weights_kb"] == pytest.approx(summary["weight_bits_kb"], abs=0.1)
    assert summary["bundle_kb"] > summary["bundle_weights_kb"]
    assert sum(summary["profile"].values()) <= 100.0 + 1e-6
    # onnxruntime's formats: int8 operators, or float ops between QuantizeLinear/DequantizeLinear
    folder = tmp_path / "edmips" / "resnet_tiny_16"
    assert "QLinearConv" in op_types(folder / "model_ort_qop.onnx")
    qdq_ops = op_types(folder / "model_ort_qdq.onnx")
    assert {"Conv", "QuantizeLinear", "DequantizeLinear"} <= qdq_ops
    assert "QLinearConv" not in qdq_ops
    # edmips's family in its int8 forms (deploy=int8, retrain.py's default): QLinearConv only
    int8 = op_types(folder / "model_int8.onnx")
    assert "QLinearConv" in int8 and not {"ConvInteger", "Conv"} & int8


def test_deploy_quant_picks_the_family_and_deploy_its_own_quantizers(capsys, tmp_path):
    """--deploy float: edmips's own thresholds (a batch norm between each conv and its
    quantizer) fit no requantization, and are counted on ConvInteger; int8sim's quantizers are
    int8 forms whatever deploy says."""
    forms, summary = run_deploy(capsys, tmp_path / "edmips", "--deploy", "float")
    assert summary["quant"] == "edmips" and summary["deploy"] == "float"
    assert set(summary["agreement"].values()) == {1.0}
    assert "ConvInteger" in op_types(tmp_path / "edmips" / "resnet_tiny_16" / "model_int8.onnx")
    forms, summary = run_deploy(
        capsys, tmp_path / "int8sim", "--quant", "int8sim", "--deploy", "float"
    )
    assert sorted(forms) == FORMS and summary["quant"] == "int8sim"
    assert set(summary["agreement"].values()) == {1.0}
    int8 = op_types(tmp_path / "int8sim" / "resnet_tiny_16" / "model_int8.onnx")
    assert "QLinearConv" in int8 and "ConvInteger" not in int8  # QLinearConv's requantization
    assert summary["float_over"]["int8"]["size"] > 1 and forms["int8"]["mb"] < forms["float"]["mb"]
    assert "QLinearConv" in summary["profile"]
