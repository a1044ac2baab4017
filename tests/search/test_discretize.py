import pytest
import torch

from edmips.search.discretize import choose, discretize


def test_argmax_takes_the_most_probable():
    probs = [torch.tensor([0.1, 0.6, 0.3]), torch.tensor([0.5, 0.2, 0.3])]
    assert discretize(probs, [(2, 3, 4), (2, 3, 4)]) == [3, 2]


def test_categorical_draws_follow_the_distribution_and_are_seeded():
    probs = [torch.tensor([0.2, 0.8])] * 2000
    draws = discretize(probs, [(1, 2)] * 2000, mode="categorical", seed=3)
    assert abs(draws.count(2) / 2000 - 0.8) < 0.04
    assert draws == discretize(probs, [(1, 2)] * 2000, mode="categorical", seed=3)
    assert draws != discretize(probs, [(1, 2)] * 2000, mode="categorical", seed=4)


def test_multinomial_converges_to_argmax_with_many_trials():
    p = torch.tensor([0.3, 0.36, 0.34])
    g = torch.Generator().manual_seed(0)
    few = [choose(p, "multinomial", trials=1, generator=g) for _ in range(300)]
    many = [choose(p, "multinomial", trials=20000, generator=g) for _ in range(20)]
    assert len(set(few)) == 3  # one trial is a categorical draw
    assert many.count(1) >= 18


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown discretization 'best'"):
        discretize([torch.tensor([1.0])], [(2,)], mode="best")
