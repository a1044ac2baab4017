"""bench/deploy.py: one line per form with its latencies and file size, then the agreements
(1.0 for both ONNX forms) and the ratios, from which model_int8.onnx comes out smaller, and
the integer bundle's packed weights as large as the weights at their bit-widths."""

import importlib.util
import json
from pathlib import Path

import pytest


def test_deploy_prints_each_form_and_exact_agreements(capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "deploy.py"
    spec = importlib.util.spec_from_file_location("bench_deploy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(
        ["--model", "resnet_tiny:16", "--runs", "1", "--check-images", "4", "--threads", "1"]
    )
    out = capsys.readouterr().out.splitlines()
    lines = [json.loads(line) for line in out if line.startswith("{")]  # the exporter prints too
    forms = {line["form"]: line for line in lines if "form" in line}
    assert sorted(forms) == ["float", "int8", "qdq"]
    assert all(line["ms_b1"] > 0 and line["ms_b64"] > 0 for line in forms.values())
    (summary,) = [line for line in lines if "agreement" in line]
    assert summary["agreement"]["int8_agreement"] == summary["agreement"]["qdq_agreement"] == 1.0
    assert summary["float_over_int8_size"] > 1 and forms["int8"]["mb"] < forms["float"]["mb"]
    assert sum(summary["profile"].values()) <= 100.0 + 1e-6 and "QLinearConv" in summary["profile"]
    assert summary["bundle_weights_kb"] == pytest.approx(summary["weight_bits_kb"], abs=0.1)
    assert summary["bundle_kb"] > summary["bundle_weights_kb"]
