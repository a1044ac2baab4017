"""ptq.py with bias correction and per-channel weight bits: still integer-only and bit-exact;
per-channel activation bits refused before calibration."""

import json

import pytest
from test_ptq_program import QUICK, float_weights  # noqa: F401 (a fixture)

from edmips.programs.ptq import ptq


@pytest.mark.parametrize(
    "correction, allocation",
    [("mean", "none"), ("mean_var", "none"), ("none", "weights"), ("mean_var", "weights")],
)
def test_refined_weights_export_bit_exactly(ptq_cfg, float_weights, correction, allocation):  # noqa: F811
    cfg = ptq_cfg(
        f"model.weights={float_weights}",
        "arch=uniform",
        f"ptq.bias_correction={correction}",
        f"ptq.bit_allocation={allocation}",
        *QUICK,
    )
    result = ptq(cfg)
    stored = json.loads(open(f"{cfg.output_dir}/metrics.json").read())
    assert stored == result
    assert stored["bias_correction"] == correction and stored["bit_allocation"] == allocation
    assert stored["prediction_agreement"] == 1.0 and stored["qdq_agreement"] == 1.0
    assert stored["uniform"] == {"wbits": 4, "abits": 4}  # the accounting keeps nominal bits


@pytest.mark.parametrize("allocation", ["activations", "both"])
def test_per_channel_activation_bits_are_refused_before_calibration(
    ptq_cfg,
    float_weights,  # noqa: F811
    tmp_path,
    allocation,
):
    cfg = ptq_cfg(
        f"model.weights={float_weights}", "arch=uniform", f"ptq.bit_allocation={allocation}"
    )
    with pytest.raises(
        ValueError, match=f"^ptq.bit_allocation={allocation}: .* layer [^ ]+: it sums"
    ):
        ptq(cfg)
    assert not (tmp_path / "ptq").exists()


def test_an_unknown_correction_is_refused(ptq_cfg, float_weights, tmp_path):  # noqa: F811
    cfg = ptq_cfg(f"model.weights={float_weights}", "arch=uniform", "ptq.bias_correction=kl")
    with pytest.raises(ValueError, match="^ptq.bias_correction=kl: choose from none, mean"):
        ptq(cfg)
    assert not (tmp_path / "ptq").exists()


def test_absorbed_batch_norms_export_bit_exactly(ptq_cfg, float_weights):  # noqa: F811
    cfg = ptq_cfg(
        f"model.weights={float_weights}",
        "arch=uniform",
        "bn_fold=true",
        "ptq.bit_allocation=weights",
        *QUICK,
    )
    result = ptq(cfg)
    assert result["bn_fold"] is True
    assert result["prediction_agreement"] == 1.0 and result["qdq_agreement"] == 1.0
