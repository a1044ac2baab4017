"""calibration_stats.pt keeps what its clips read back, not the whole sample: a file within a
small multiple of the network's parameters, whose reuse still gives the run's result."""

import json

import torch
from test_ptq_program import QUICK, float_weights  # noqa: F401 (a fixture)

from edmips.models import create_model
from edmips.nn import to_fixed
from edmips.nn.convert import quantizable_names
from edmips.programs.ptq import ptq
from edmips.ptq import method, stats
from edmips.quant.registry import Family

PTQ = Family("clipped", "maxabs", "clipped_signed")
SAME = ("test_acc", "test_acc_integer", "prediction_agreement", "qdq_agreement", "float_acc")


def test_the_file_is_within_twice_the_parameters(tmp_path):
    """ResNet-8 calibrated on ptq.py's default 256 images: 33.5 MB of samples before, 315 KB of
    parameters."""
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    to_fixed(model, dict.fromkeys(quantizable_names(model), (4, 4)), PTQ)
    images = torch.rand(2, 128, 3, 32, 32)
    gathered = stats.gather(model, [(x,) for x in images], 256)
    path = stats.save(gathered, tmp_path / stats.FILE)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    assert path.stat().st_size < 2 * parameters
    assert len(gathered.clips) == 13  # every clipped quantizer is in it
    for entry in gathered.clips.values():
        kept = entry["sample"].numel() + entry["zeros"]
        assert kept == stats.SAMPLE_KEPT and entry["sample"].dtype == torch.float16
        assert entry["signed"] or (entry["sample"] >= 0).all()  # the rest only counted
    # what the file holds is what the model's clips are computed from, bit for bit
    clips = stats.finish(model, method("aciq_mix"))
    read = stats.load(path)
    stats.restore(model, read)
    assert stats.finish(model, method("aciq_mix")) == clips


def test_a_run_given_the_file_gives_the_same_result(ptq_cfg, float_weights):  # noqa: F811
    first_cfg = ptq_cfg(
        f"model.weights={float_weights}",
        "arch=uniform",
        "data.num_test=64",
        "calibration.images=32",
    )
    first = ptq(first_cfg)
    saved = f"{first_cfg.output_dir}/{stats.FILE}"
    assert any(
        e["sample"].numel() + e["zeros"] == stats.SAMPLE_KEPT
        for e in stats.load(saved).clips.values()
    )
    again_cfg = ptq_cfg(
        f"model.weights={float_weights}", "arch=uniform", f"calibration.stats={saved}", *QUICK
    )
    again_cfg.output_dir = str(again_cfg.output_dir) + "-again"
    again = ptq(again_cfg)
    assert {k: first[k] for k in SAME} == {k: again[k] for k in SAME}
    assert again["calibration_images"] == 32
    manifests = [f"{cfg.output_dir}/integer/manifest.json" for cfg in (first_cfg, again_cfg)]
    assert json.loads(open(manifests[0]).read()) == json.loads(open(manifests[1]).read())


def test_an_older_file_with_the_whole_sample_still_reads():
    sample = torch.tensor([-1.0, 0.5, 2.0])
    s = stats.statistics({"signed": True, "max_abs": 2.0, "sample": sample})
    assert torch.equal(s.sample(), sample) and s.max_abs == 2.0
