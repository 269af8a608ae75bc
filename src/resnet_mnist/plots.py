"""Training curves as the book draws them: loss per step (train and dev), dev accuracy per step."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


@dataclass
class History:
    """Per-step train loss and per-evaluation dev loss/accuracy of one run."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    dev_loss: list[float] = field(default_factory=list)
    dev_accuracy: list[float] = field(default_factory=list)


def smooth(values: list[float], window: int = 9) -> list[float]:
    """Centred moving average (shrinking at the ends): readable curves that do not lag the raw
    ones, which are drawn faintly beside them."""
    if not values:
        return []
    array = np.asarray(values, dtype=float)
    half = max(0, min(window, len(array) // 5) // 2)
    cumsum = np.concatenate([[0.0], np.cumsum(array)])
    idx = np.arange(len(array))
    lo, hi = np.maximum(idx - half, 0), np.minimum(idx + half + 1, len(array))
    return list((cumsum[hi] - cumsum[lo]) / (hi - lo))


def plot_curves(histories: dict[str, History], path: Path, title: str = "") -> list[Path]:
    """Two panels, one line per label; writes `path` (and a PDF beside a PNG) and returns them."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    for index, (label, h) in enumerate(histories.items()):
        color = f"C{index}"
        ax_loss.plot(h.steps, h.train_loss, color=color, alpha=0.25, linewidth=0.8)
        ax_loss.plot(h.steps, smooth(h.train_loss), color=color, label=f"{label} train loss")
        ax_loss.plot(h.eval_steps, h.dev_loss, color=color, linestyle="--", marker=".",
                     label=f"{label} dev loss")
        ax_acc.plot(h.eval_steps, h.dev_accuracy, color=color, marker=".",
                    label=f"{label} dev accuracy")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="dev accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    written = [path]
    fig.savefig(path, dpi=120)
    if path.suffix == ".png":
        written.append(path.with_suffix(".pdf"))
        fig.savefig(written[-1])
    plt.close(fig)
    return written
