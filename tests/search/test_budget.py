"""Budget mode: the multiplier adapts and the discretized network lands on the target."""

import csv
import math

import pytest
import torch

from edmips.report import collect, write_report
from edmips.retrain.run import retrain
from edmips.search.budget import DualAscent, closest_to_budget
from edmips.search.run import search

SPACE_W, SPACE_A = (1, 2, 3, 4), (2, 3, 4)


def test_dual_ascent_raises_mu_above_the_target_and_lowers_it_below():
    dual = DualAscent(2.0, lr=0.1)
    mu = torch.tensor(0.01)
    assert dual.update(mu, torch.tensor(3.0)) > mu
    assert dual.update(mu, torch.tensor(1.5)) < mu
    assert dual.update(mu, torch.tensor(2.0)) == pytest.approx(0.01)


def _bits(flops, w, a):
    return math.sqrt(sum(f * x * y for f, x, y in zip(flops, w, a)) / sum(flops))


@pytest.mark.parametrize("target", [1.5, 2.0, 2.6, 3.3])
def test_budget_discretization_lands_within_one_percent(target):
    torch.manual_seed(0)
    flops = [2_359_296] * 6 + [1_179_648, 131_072] + [2_359_296] * 5 + [1_179_648, 131_072]
    pw = [torch.softmax(torch.randn(4) * 0.1, 0) for _ in flops]
    pa = [torch.softmax(torch.randn(3) * 0.1, 0) for _ in flops]
    n = len(flops)
    w, a = closest_to_budget(pw, pa, [SPACE_W] * n, [SPACE_A] * n, flops, target)
    assert abs(_bits(flops, w, a) - target) <= 0.01 * target


def test_budget_discretization_keeps_winner_take_all_when_it_fits():
    torch.manual_seed(1)
    flops = [1000, 2000, 500, 4000, 800]
    pw = [torch.softmax(torch.randn(4) * 4, 0) for _ in flops]
    pa = [torch.softmax(torch.randn(3) * 4, 0) for _ in flops]
    w0 = [SPACE_W[int(p.argmax())] for p in pw]
    a0 = [SPACE_A[int(p.argmax())] for p in pa]
    n = len(flops)
    target = _bits(flops, w0, a0)
    assert closest_to_budget(pw, pa, [SPACE_W] * n, [SPACE_A] * n, flops, target) == (w0, a0)


@pytest.mark.slow
def test_two_budgets_land_within_two_percent_and_the_sweep_reports(
    search_cfg, retrain_cfg, tmp_path
):
    """A budget sweep, a uniform baseline retrained, and the report built from the sweep dir."""
    sweep = tmp_path / "sweep"
    for i, target in enumerate((2.0, 3.0)):
        cfg = search_cfg("model=resnet8", f"target_bits={target}")
        cfg.output_dir = str(sweep / str(i))
        found = search(cfg)["arch"]
        assert abs(found.equivalent_bits - target) <= 0.02 * target
        assert found.extra["target_bits"] == target
        # mu started at 0.001; the expected bits start near 2.7, above 2 and below 3
        assert (found.extra["final_mu"] > 0.001) == (target < 2.7)
    cfg = retrain_cfg("model=resnet8", "arch=uniform", "wbits=2", "abits=2", "trainer.max_epochs=1")
    cfg.output_dir = str(sweep / "2")
    retrain(cfg)

    paths = write_report(collect([sweep]), tmp_path / "report")
    rows = list(csv.DictReader(open(paths["csv"])))
    assert sorted(r["budget"] for r in rows) == ["2 bits", "3 bits", "uniform W2A2"]
    for row in rows:
        assert float(row["equivalent_bits"]) == pytest.approx(
            {"2 bits": 2.0, "3 bits": 3.0, "uniform W2A2": 2.0}[row["budget"]], rel=0.02
        )
    assert paths["pareto"].stat().st_size > 10_000
