"""Plots: centred smoothing, and one figure function for single runs and seed groups."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_mnist.core.figures import History, plot_curves, smooth


def test_smooth_is_centred_and_keeps_length() -> None:
    values = [float(v) for v in range(1, 11)]
    out = smooth(values, window=9)
    assert len(out) == 10
    assert out[4] == pytest.approx(5.0)  # a straight line is unchanged in the middle
    assert out[0] == pytest.approx(1.5) and out[-1] == pytest.approx(9.5)
    assert smooth([]) == [] and smooth([3.0]) == [3.0]


def history(offset: float) -> History:
    steps = list(range(20))
    return History(
        steps,
        [2.0 - 0.05 * s + offset for s in steps],
        [5, 10, 19],
        [1.0 + offset, 0.5, 0.3],
        [0.5, 0.8 + offset, 0.9],
    )


def test_plot_curves_writes_png_and_pdf(tmp_path: Path) -> None:
    written = plot_curves(
        {"plain": [history(0.0), history(0.1)], "residual": [history(-0.1)], "empty": []},
        tmp_path / "fig.png",
        "title",
    )
    assert written == [tmp_path / "fig.png", tmp_path / "fig.pdf"]
    assert all(p.stat().st_size > 1000 for p in written)
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"


def test_save_figure_writes_every_format_and_frees_the_figure(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from resnet_mnist.core.figures import save_figure

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    before = len(plt.get_fignums())
    paths = save_figure(fig, tmp_path / "a" / "f.png", tmp_path / "f.pdf")
    assert [p.read_bytes()[:4] for p in paths] == [b"\x89PNG", b"%PDF"]
    assert len(plt.get_fignums()) == before - 1


def test_plot_curves_draws_the_mean_of_the_seeds_per_label(tmp_path: Path, monkeypatch) -> None:
    import numpy as np

    from resnet_mnist.core import figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, *paths: drawn.append(fig) or list(paths))
    plot_curves({"plain": [history(0.0), history(0.2)], "residual": [history(-0.1)]}, tmp_path / "f.png", "t")
    (fig,) = drawn
    loss, acc = fig.axes
    labels = {line.get_label(): line for line in loss.lines + acc.lines}
    assert {"plain (mean of 2 seeds) train loss", "plain dev loss", "residual train loss"} <= set(labels)
    # The dev accuracy drawn for two seeds is their mean, at the evaluation steps.
    plain_acc = labels["plain (mean of 2 seeds)"]
    assert list(plain_acc.get_xdata()) == [5, 10, 19]
    assert np.allclose(plain_acc.get_ydata(), [0.5, 0.9, 0.9])
    assert loss.get_title().startswith("train loss") and acc.get_ylabel() == "accuracy"
    assert fig.get_suptitle() == "t"
