"""Issue 30's CNNs through the whole pipeline: search.py's search, then retrain.py on the
architecture it found, whose export computes the network's classes exactly, in the integer
runtime and in model_qdq.onnx. Tiny runs: 32 px synthetic images, a few batches of them, and
the narrowest width torchvision builds where it has a knob (MobileNetV3's width_mult)."""

import pytest

from edmips.models import list_models
from edmips.records import arch

TINY = [
    "data.num_train=96",
    "data.val_size=32",
    "data.num_test=32",
    "data.batch_size=32",
    "trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
]

# (torchvision name, model overrides): its layers as torchvision builds them, narrowed where it can
MODELS = [
    ("mobilenet_v3_small", ["+model.width_mult=0.25"]),  # 0.12 M parameters instead of 1.5
    ("shufflenet_v2_x0_5", []),
    pytest.param("squeezenet1_0", [], marks=pytest.mark.slow),
    pytest.param("mnasnet0_5", [], marks=pytest.mark.slow),
    pytest.param("efficientnet_b0", [], marks=pytest.mark.slow),  # no width knob in torchvision
    pytest.param("regnet_y_400mf", [], marks=pytest.mark.slow),  # nor here
]


@pytest.mark.parametrize("name,overrides", MODELS)
def test_search_then_retrain_exports_exactly(
    name, overrides, search_cfg, retrain_cfg, tmp_path, no_search_figures
):
    from edmips.programs.retrain import retrain
    from edmips.programs.search import search

    model = ["model=torchvision", f"model.name=tv_{name}", *overrides]
    found = search(search_cfg(*model, *TINY, "search.warmup_epochs=0"))["arch"]
    assert found.model == f"tv_{name}"
    assert arch.load(tmp_path / "found.json", known_models=list_models()) == found

    cfg = retrain_cfg(*model, f"arch={tmp_path / 'found.json'}", *TINY)
    metrics = retrain(cfg)
    assert metrics["model"] == f"tv_{name}"
    retrained = arch.load(f"{cfg.output_dir}/arch.json", known_models=list_models())
    assert [(x.name, x.wbits, x.abits) for x in retrained.layers] == [
        (x.name, x.wbits, x.abits) for x in found.layers
    ]  # the found bit-widths, layer by layer
    assert metrics["checked_images"] == 32
    assert metrics["prediction_agreement"] == 1.0  # the integer runtime
    assert metrics["qdq_agreement"] == 1.0  # model_qdq.onnx under onnxruntime


@pytest.fixture
def bench_models():
    """bench/models.py as a module."""
    from conftest import load_bench

    return load_bench("models")


def test_the_coverage_script_records_exact_refused_and_bugs(bench_models, monkeypatch, tmp_path):
    row = bench_models.check("squeezenet1_0", 0.74)
    assert (row["image_size"], row["result"]) == (32, "exact")
    assert row["agreement"] == {"integer": 1.0, "qdq": 1.0}

    def refuse(name, **kw):  # edmips's one line
        from edmips.models.tv import check_image_size

        check_image_size(type("M", (), {"name": name, "image_size": 224})(), (3, 32, 32))

    monkeypatch.setattr(bench_models, "create_model", refuse)
    row = bench_models.check("squeezenet1_0", 0.74)
    assert (
        row["result"] == "refused: model tv_squeezenet1_0 needs 224x224 images, the data has 32x32"
    )

    def crash(name, **kw):  # not ours: a bug, named with where it was raised, in one line
        raise ValueError("line one\nline two")

    monkeypatch.setattr(bench_models, "create_model", crash)
    row = bench_models.check("squeezenet1_0", 0.74)
    assert row["result"].startswith("bug: ValueError: line one (test_any_cnn_pipeline.py:")
    assert "\n" not in row["result"]

    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{bench_models.BEGIN}\nold\n{bench_models.END}\nb\n")
    bench_models.write_readme("| table |", readme)
    assert readme.read_text() == f"a\n{bench_models.BEGIN}\n| table |\n{bench_models.END}\nb\n"
