"""What a trained model gets right and wrong on the full test set: confusion matrix, per-class
precision, recall and F1, and a gallery of its most confident mistakes.

`mlflow.models.evaluate` is not used: its classifier evaluator expects tabular features and a
model that returns labels, while this model takes (N, 28, 28) images and returns probabilities;
the figures it would produce for a 10-class problem are these, computed here directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnet_mnist.core.figures import plt, save_figure

CLASSES = 10


def per_class(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall and F1 per digit of a (10, 10) confusion matrix (row = true digit); 0
    where a digit is never predicted or never present."""
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass
class Evaluation:
    """Scores of one model on one labelled split."""

    loss: float
    accuracy: float
    confusion: np.ndarray  #: (10, 10): row = true digit, column = predicted digit
    probabilities: np.ndarray  #: (N, 10)
    labels: np.ndarray

    def per_class(self) -> dict[str, np.ndarray]:
        """Precision, recall and F1 per digit (0 where a digit is never predicted or present)."""
        return per_class(self.confusion)

    def mistakes(self, count: int) -> np.ndarray:
        """Indices of the wrong predictions made with the highest confidence, most confident
        first."""
        predicted = self.probabilities.argmax(1)
        wrong = np.flatnonzero(predicted != self.labels)
        return wrong[np.argsort(-self.probabilities[wrong].max(1), kind="stable")][:count]


@torch.inference_mode()
def evaluate_model(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> Evaluation:
    """Run `model` (eval mode) over a preprocessed split and score every prediction. Batches of
    256 keep a batch's activations in cache (1,000 ran 1.3x slower on one thread)."""
    model.eval()
    logits = torch.cat([model(images[i : i + batch_size]).float() for i in range(0, len(labels), batch_size)])
    loss = F.cross_entropy(logits, labels).item()
    probabilities = torch.softmax(logits, 1).numpy()
    truth = labels.numpy()
    confusion = np.zeros((CLASSES, CLASSES), dtype=np.int64)
    np.add.at(confusion, (truth, probabilities.argmax(1)), 1)
    accuracy = float(np.trace(confusion) / len(truth))
    return Evaluation(loss, accuracy, confusion, probabilities, truth)


def plot_confusion(ev: Evaluation, path: Path, title: str = "") -> Path:
    """The confusion matrix as a heat map with the counts written in."""
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(np.log1p(ev.confusion), cmap="Blues")
    for (row, col), count in np.ndenumerate(ev.confusion):
        if count:
            ax.text(
                col,
                row,
                str(count),
                ha="center",
                va="center",
                fontsize=7,
                color="white" if row == col else "black",
            )
    ax.set(
        xticks=range(CLASSES),
        yticks=range(CLASSES),
        xlabel="predicted digit",
        ylabel="true digit",
        title=title or f"confusion matrix, accuracy {ev.accuracy:.4f}",
    )
    fig.colorbar(image, ax=ax, label="log(1 + count)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def per_digit_table(confusions: Mapping[str, np.ndarray]) -> dict[str, list[Any]]:
    """Per-digit scores of one or more sets of digits (name -> confusion matrix) as columns, one
    row per set and digit: the shape of MLflow's table artifacts, which the UI shows as one table
    where thirty metrics would be thirty single-point charts."""
    table: dict[str, list[Any]] = {
        "set": [],
        "digit": [],
        "support": [],
        "precision": [],
        "recall": [],
        "f1": [],
    }
    for name, confusion in confusions.items():
        scores = per_class(confusion)
        table["set"] += [name] * CLASSES
        table["digit"] += list(range(CLASSES))
        table["support"] += [int(n) for n in confusion.sum(1)]
        for key, values in scores.items():
            table[key] += [round(float(v), 6) for v in values]
    return table


def plot_per_digit(confusions: Mapping[str, np.ndarray], path: Path, title: str = "") -> Path:
    """Grouped bars per digit: precision, recall and F1 for one set; for several, each set's
    recall (the share of that digit read right). The y axis starts just below the lowest bar,
    where a point's difference shows."""
    if len(confusions) == 1:
        (confusion,) = confusions.values()
        series, ylabel = per_class(confusion), "score"
    else:
        series, ylabel = (
            {name: per_class(c)["recall"] for name, c in confusions.items()},
            "recall (share read right)",
        )
    digits = np.arange(CLASSES)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(9 + 0.4 * max(0, len(series) - 3), 4))
    for index, (name, values) in enumerate(series.items()):
        ax.bar(digits + (index - (len(series) - 1) / 2) * width, values, width, label=name)
    low = min(float(v.min()) for v in series.values())
    ax.set(
        xticks=digits,
        xlabel="digit",
        ylabel=ylabel,
        ylim=(max(0.0, np.floor((low - 0.01) * 50) / 50), 1.0),
        title=title or "per-digit scores",
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the bars, never on them
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_mistakes(ev: Evaluation, raw_images: np.ndarray, path: Path, count: int = 24) -> Path:
    """The most confident mistakes: each digit as the model saw it, with truth and prediction."""
    chosen = ev.mistakes(count)
    columns = 8
    rows = max(1, -(-len(chosen) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.3, rows * 1.55), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, index in zip(axes.flat, chosen, strict=False):
        ax.imshow(raw_images[index], cmap="gray")
        p = ev.probabilities[index]
        ax.set_title(f"true {ev.labels[index]}, said {p.argmax()}\np={p.max():.2f}", fontsize=7)
    fig.suptitle(f"the {len(chosen)} most confident mistakes", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)
    return path
