"""Evaluation: confusion matrix, per-class scores and confident mistakes on hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from resnet_mnist.analysis import evaluation
from resnet_mnist.analysis.evaluation import (
    evaluate_model,
    per_digit_table,
    plot_confusion,
    plot_mistakes,
    plot_per_digit,
)


class Fixed(nn.Module):
    """A 'model' whose logits are given: row i of the input holds the logits for image i."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_scores_from_known_predictions(tmp_path: Path) -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.full((6, 10), -5.0)
    predicted = [0, 1, 1, 1, 2, 0]  # one 0 called 1 (confidently), one 2 called 0
    for i, p in enumerate(predicted):
        logits[i, p] = 9.0 if i == 1 else 2.0
    ev = evaluate_model(Fixed(), logits, labels, batch_size=4)
    assert ev.accuracy == 4 / 6
    assert ev.confusion[0].tolist()[:3] == [1, 1, 0] and ev.confusion[2].tolist()[:3] == [1, 0, 1]
    assert ev.confusion.sum() == 6
    scores = ev.per_class()
    assert np.allclose(scores["precision"][:3], [1 / 2, 2 / 3, 1])
    assert np.allclose(scores["recall"][:3], [1 / 2, 1, 1 / 2])
    assert np.allclose(scores["f1"][:3], [1 / 2, 0.8, 2 / 3])
    assert scores["precision"][3] == scores["recall"][3] == 0  # never present, never predicted
    assert ev.mistakes(5).tolist() == [1, 5]  # the confident one first
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert abs(ev.loss - loss) < 1e-6
    raw = np.zeros((6, 28, 28), dtype=np.uint8)
    for path in (plot_confusion(ev, tmp_path / "c.png"), plot_mistakes(ev, raw, tmp_path / "m.png")):
        assert path.read_bytes()[:4] == b"\x89PNG"


def test_per_digit_scores_are_one_table_and_one_figure(tmp_path: Path, monkeypatch) -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.full((6, 10), -5.0)
    for i, p in enumerate([0, 1, 1, 1, 2, 0]):
        logits[i, p] = 2.0
    ev = evaluate_model(Fixed(), logits, labels)
    perfect = np.diag([2, 2, 2] + [0] * 7)
    table = per_digit_table({"six": ev.confusion, "perfect": perfect})
    assert all(len(column) == 20 for column in table.values())
    assert table["set"][:10] == ["six"] * 10 and table["digit"][10:] == list(range(10))
    assert table["support"][:4] == [2, 2, 2, 0]
    assert (
        table["recall"][:3] == [0.5, 1.0, 0.5]
        and table["f1"][1] == 0.8
        and table["recall"][10:13] == [1.0] * 3
    )
    drawn = []
    monkeypatch.setattr(evaluation, "save_figure", lambda fig, *paths: drawn.append(fig) or list(paths))
    plot_per_digit({"six": ev.confusion}, tmp_path / "p.png", "six digits")
    (ax,) = drawn[0].axes  # one set: its precision, recall and F1
    bars = [[p.get_height() for p in c.patches] for c in ax.containers]
    assert bars[0][:3] == pytest.approx([0.5, 2 / 3, 1.0]) and bars[1][:3] == pytest.approx([0.5, 1.0, 0.5])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["precision", "recall", "f1"]
    assert ax.get_title() == "six digits" and ax.get_ylim()[0] == 0.0
    plot_per_digit({"six": ev.confusion, "perfect": perfect}, tmp_path / "q.png")
    (ax,) = drawn[1].axes  # several sets: each one's recall
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["six", "perfect"]
    assert [p.get_height() for p in ax.containers[1].patches][:3] == [1.0, 1.0, 1.0]
