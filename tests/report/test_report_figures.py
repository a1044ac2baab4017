import json

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread
from report_fakes import COSTS, SPACE, history, make_search_run, search_arch

from edmips.records import arch
from edmips.report import figures, write_search_figures

NAMES = ["bit_allocation.png", "sensitivity.png", "selector_evolution.png", "complexity.png"]


def _image(path) -> np.ndarray:
    img = imread(path)[..., :3]
    assert img.shape[0] > 200 and img.shape[1] > 300
    ink = np.any(np.abs(img - img[0, 0]) > 0.1, axis=-1)  # pixels unlike the background
    assert 0.01 < ink.mean() < 0.9, "blank or filled image"
    return img


def _has_colour(img: np.ndarray, colour: str) -> bool:
    return bool(np.any(np.all(np.abs(img - to_rgb(colour)) < 0.02, axis=-1)))


@pytest.mark.parametrize("epochs", [1, 6])
def test_search_figures_are_written_as_images(tmp_path, epochs):
    make_search_run(tmp_path, [2, 2, 3, 1, 4, 4], [2, 3, 2, 2, 4, 3], epochs=epochs, mu=0.02)
    paths = write_search_figures(tmp_path)
    assert [p.name for p in paths] == NAMES
    for p in paths:
        assert p.parent == tmp_path
        _image(p)


def test_sensitivity_marks_the_layers_given_more_bits_than_their_flops_alone_would(tmp_path):
    n = len(COSTS)
    uniform = search_arch([2] * n, [3] * n)
    keen = [[0.01, 0.01, 0.01, 0.97]] + [[0.25] * 4] * (n - 1)  # layer 0 wants 4-bit weights
    a = arch.build("resnet8", SPACE, COSTS, [2] * n, [3] * n, keen, [[1 / 3] * 3] * n)
    img = _image(figures.plot_sensitivity(a, tmp_path / "s.png"))
    assert _has_colour(img, figures._MORE[True]) and _has_colour(img, figures._MORE[False])
    # selectors that learned nothing are exactly what the FLOPs alone give: nothing stands out
    img = _image(figures.plot_sensitivity(uniform, tmp_path / "u.png"))
    assert not _has_colour(img, figures._MORE[True]) and not _has_colour(img, figures._MORE[False])


def test_bit_allocation_draws_both_series(tmp_path):
    img = _image(figures.plot_bit_allocation(search_arch([2] * 6, [3] * 6), tmp_path / "b.png"))
    assert _has_colour(img, figures.W_COLOR) and _has_colour(img, figures.A_COLOR)


def test_target_line_is_drawn_only_when_given(tmp_path):
    h = history(4)
    with_target = _image(figures.plot_complexity(h, tmp_path / "t.png", target_bits=2.5))
    without = _image(figures.plot_complexity(h, tmp_path / "n.png"))
    assert _has_colour(with_target, "tab:red") and not _has_colour(without, "tab:red")
    assert _has_colour(without, figures.MU_COLOR)


@pytest.mark.parametrize("epochs", [None, 0])
def test_without_history_only_the_final_selectors_are_drawn(tmp_path, epochs, caplog):
    make_search_run(tmp_path, [2] * 6, [2] * 6, epochs=epochs)
    assert [p.name for p in write_search_figures(tmp_path)] == NAMES[:2]
    assert not (tmp_path / "complexity.png").exists()
    assert "only the bit allocation and sensitivity" in caplog.text


def test_history_that_does_not_fit_the_arch_is_refused(tmp_path):
    make_search_run(tmp_path, [2] * 6, [2] * 6)
    (tmp_path / "history.json").write_text(json.dumps(history(3, n_layers=4)))
    with pytest.raises(ValueError, match="probs_w has 4 layers, the search's found.json 6"):
        write_search_figures(tmp_path)
    with pytest.raises(ValueError, match="history is empty"):
        figures.plot_complexity([], tmp_path / "c.png")


def test_missing_values_in_history_are_skipped(tmp_path):
    h = history(3)
    h[1]["discrete_bits"] = None
    h[2]["val_acc"] = float("nan")
    del h[0]["mu"]
    _image(figures.plot_complexity(h, tmp_path / "c.png"))
