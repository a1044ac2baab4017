"""metrics.json's typed form, and the mode of files written atomically."""

import json
import os
import stat
from dataclasses import fields

import pytest

from edmips.records import metrics
from edmips.records.files import write_text_atomic


def _m(**changes):
    values = dict(model="resnet8", equivalent_bits=2.0, bitops=400, weight_bits_total=800)
    return metrics.RetrainMetrics(**{**values, **changes})


def test_metrics_round_trip_and_older_files_read(tmp_path):
    m = _m(test_acc=0.5, test_acc_top5=0.9, uniform={"wbits": 2, "abits": 2}, latency_ms=1.5)
    assert metrics.load(metrics.save(m, tmp_path / "metrics.json")) == m
    old = {"model": "resnet8", "equivalent_bits": 2, "bitops": 4, "weight_bits_total": 8, "x": 1}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert metrics.load(tmp_path / "old.json").test_acc_top5 is None
    assert metrics.load(tmp_path / "old.json").latency_ms is None  # no table measured it


def test_another_export_form_keeps_its_agreement_in_the_file(tmp_path):
    record = dict(model="m", equivalent_bits=2.0, bitops=4, weight_bits_total=8, x=1)
    m = metrics.RetrainMetrics.from_record({**record, "qdq_agreement": 1.0, "int8_agreement": 0.5})
    assert m.qdq_agreement == 1.0 and m.other_agreements == {"int8_agreement": 0.5}
    written = json.loads(metrics.save(m, tmp_path / "metrics.json").read_text())
    assert written["int8_agreement"] == 0.5 and "x" not in written
    assert "other_agreements" not in written
    assert metrics.load(tmp_path / "metrics.json") == m


REQUIRED = '"model": "m", "equivalent_bits": 2, "bitops": 1, "weight_bits_total": 1'


@pytest.mark.parametrize(
    "content,message",
    [
        ("[1]", "not a JSON object"),
        ('{"model": "m"}', "missing equivalent_bits, bitops, weight_bits_total"),
        ('{"model": "m", "equivalent_bits": NaN, "bitops": 1, "weight_bits_total": 1}', "=nan"),
        ('{"model": "m", "equivalent_bits": "2", "bitops": 1, "weight_bits_total": 1}', "number"),
        ('{"schema": 7, "model": "m"}', "schema 7 is not supported"),
        ("{" + REQUIRED + ', "test_acc": "0.9"}', "test_acc='0.9' is not a fraction in [0, 1]"),
        ("{" + REQUIRED + ', "test_acc": NaN}', "test_acc=nan is not a fraction in [0, 1]"),
        ("{" + REQUIRED + ', "val_acc": 1.5}', "val_acc=1.5 is not a fraction in [0, 1]"),
        ("{" + REQUIRED + ', "mu": "x"}', "mu='x' is not a finite number"),
        ("{" + REQUIRED + ', "target_bits": "two"}', "target_bits='two' is not a positive"),
        ("{" + REQUIRED + ', "seed": 1.5}', "seed=1.5 is not an integer"),
        ("{" + REQUIRED + ', "bn_fold": "no"}', "bn_fold='no' is not true or false"),
        ("{" + REQUIRED + ', "uniform": {"wbits": "2"}}', "uniform={'wbits': '2'} is not {\""),
        ("{" + REQUIRED + ', "quant": "edmips"}', "quant='edmips' is not {"),
        ("{" + REQUIRED + ', "int8_agreement": 2}', "int8_agreement=2 is not a fraction"),
        ("{" + REQUIRED + ', "model": null}', "missing model"),
    ],
)
def test_bad_metrics_files(tmp_path, content, message):
    path = tmp_path / "metrics.json"
    path.write_text(content)
    with pytest.raises(metrics.MetricsError) as e:
        metrics.load(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)
    assert "\n" not in str(e.value)


def test_every_field_has_a_kind():
    names = {f.name for f in fields(metrics.RetrainMetrics)} - {"other_agreements"}
    assert set(metrics.FIELDS) == names


def test_non_finite_metrics_are_not_written(tmp_path):
    with pytest.raises(ValueError):
        metrics.save(_m(test_acc=float("nan")), tmp_path / "metrics.json")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writes_keep_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = write_text_atomic(tmp_path / "a" / "f.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text() == "{}\n"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
