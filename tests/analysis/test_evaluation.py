"""Evaluation: confusion matrix, per-class scores and confident mistakes on hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from resnet_mnist.analysis.evaluation import evaluate_model, plot_confusion, plot_mistakes


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
