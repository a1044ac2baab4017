"""An ONNX form is one module that registers itself: export writes every registered form and
verify checks every one with a runner. The bundle folder gets the umask's mode."""

import os
import stat

import onnx
import pytest
import torch
from test_export import trained_like

import edmips.export
from edmips.export import export, lower, save_bundle
from edmips.export import onnx as onnx_forms
from edmips.export.onnx.qdq import QdqWriter, qdq_runtime
from edmips.export.verify import verify

SIZE = 16


class NegatedWriter(QdqWriter):
    """The qdq model with its logits negated: every prediction differs from the reference's."""

    def logits(self, acc, node):
        super().logits(acc, node)
        self.nodes[-1].output[0] = "positive"
        self.add("Neg", ["positive"], "logits")


@pytest.fixture
def negated_form():
    used = []

    def runner(path):
        used.append(path)
        return qdq_runtime(path)

    form = onnx_forms.Form(
        "negated", "model_negated.onnx", lambda graph: NegatedWriter(graph).model(), runner
    )
    onnx_forms.forms()  # the package's own forms first
    onnx_forms.register(form)
    yield used
    onnx_forms.unregister("negated")


def _loader(n=12, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(n, 3, SIZE, SIZE, generator=g), torch.randint(0, 10, (n,), generator=g)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def test_a_registered_form_is_written_and_verified(tmp_path, negated_form):
    model = trained_like("resnet_tiny", SIZE, seed=4)
    paths = export(model, (3, SIZE, SIZE), tmp_path)
    names = ["integer", "model.onnx", "model_int8.onnx", "model_negated.onnx", "model_qdq.onnx"]
    assert [p.name for p in paths] == names
    onnx.checker.check_model(str(tmp_path / "model_negated.onnx"))
    record = verify(model, tmp_path, _loader(), check_images=11)
    assert negated_form == [tmp_path / "model_negated.onnx"]
    assert list(record) == [
        "test_acc",
        "test_acc_top5",
        "test_images",
        "test_acc_integer",
        "prediction_agreement",
        "int8_agreement",
        "negated_agreement",
        "qdq_agreement",
        "checked_images",
    ]
    assert record["test_images"] == 12 and record["checked_images"] == 11
    assert record["prediction_agreement"] == record["qdq_agreement"] == 1.0
    assert record["negated_agreement"] == 0.0
    whole = verify(model, tmp_path, _loader())  # every image checked: the same predictions
    assert whole["test_acc_integer"] == whole["test_acc"] and whole["checked_images"] == 12


def test_a_form_that_cannot_hold_the_graph_is_skipped_with_a_warning(tmp_path, caplog, monkeypatch):
    model = trained_like("resnet_tiny", SIZE, seed=5)
    lowered = lower(model, (3, SIZE, SIZE))
    lowered.node("stages.0.0.conv1").attrs["acc_bits"] = 30
    monkeypatch.setattr(edmips.export, "lower", lambda *args: lowered)
    paths = export(model, (3, SIZE, SIZE), tmp_path)
    assert [p.name for p in paths] == ["integer", "model_int8.onnx"]  # int32 holds 30 bits
    assert "no model.onnx: layer stages.0.0.conv1: a 30-bit accumulator" in caplog.text
    assert "no model_qdq.onnx" in caplog.text
    record = verify(model, tmp_path, _loader(), check_images=None)
    assert record["qdq_agreement"] is None and record["checked_images"] == 12
    assert record["int8_agreement"] == 1.0


def test_unknown_forms_are_refused_by_name():
    with pytest.raises(ValueError, match="unknown ONNX form 'int4': choose from int8, qdq, qonnx"):
        onnx_forms.form("int4")
    with pytest.raises(ValueError, match="'qdq' is registered twice"):
        onnx_forms.register(onnx_forms.form("qdq"))


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700), (0o002, 0o775)])
def test_the_bundle_folder_gets_the_umasks_mode(tmp_path, umask, mode):
    graph = lower(trained_like("resnet_tiny", SIZE), (3, SIZE, SIZE))
    old = os.umask(umask)
    try:
        path = save_bundle(graph, tmp_path / "integer")
        path = save_bundle(graph, tmp_path / "integer")  # replacing the one there
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["integer"]
    assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "manifest.json"]
