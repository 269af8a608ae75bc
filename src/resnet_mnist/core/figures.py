"""Training curves as the book draws them (loss per step, train and dev; dev accuracy per step), and
the residual study's diagnostics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


@dataclass
class History:
    """Per-step train loss and per-evaluation dev loss/accuracy of one run."""

    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    dev_loss: list[float] = field(default_factory=list)
    dev_accuracy: list[float] = field(default_factory=list)


def save_figure(fig: Figure, *paths: Path) -> list[Path]:
    """Write `fig` to each path (the format from its suffix, 120 dpi) and free it: pyplot keeps
    every figure alive until it is closed."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return list(paths)


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


def plot_curves(
    groups: dict[str, list[History]], path: Path, title: str = "", formats: tuple[str, ...] = ("png", "pdf")
) -> list[Path]:
    """The book's two panels, one colour per label: train loss per step (raw, faint, and smoothed)
    with dev loss, and dev accuracy per step. A label with several runs (seeds) is drawn as their
    mean with a min-max band. Writes `path` in each of `formats` and returns the paths."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (label, runs) in enumerate(groups.items()):
        if not runs:
            continue
        color, n = f"C{index}", len(runs)
        name = label + (f" (mean of {n} seeds)" if n > 1 else "")
        steps = min((h.steps for h in runs), key=len)
        loss = np.array([h.train_loss[: len(steps)] for h in runs])
        evals = min((h.eval_steps for h in runs), key=len)
        dev_loss = np.array([h.dev_loss[: len(evals)] for h in runs])
        dev_acc = np.array([h.dev_accuracy[: len(evals)] for h in runs])
        ax_loss.plot(steps, loss.mean(0), color=color, alpha=0.25, linewidth=0.8)
        ax_loss.plot(steps, smooth(list(loss.mean(0))), color=color, label=f"{name} train loss")
        ax_loss.plot(
            evals, dev_loss.mean(0), color=color, linestyle="--", marker=".", label=f"{label} dev loss"
        )
        ax_acc.plot(evals, dev_acc.mean(0), color=color, marker=".", label=name)
        if n > 1:
            ax_loss.fill_between(steps, loss.min(0), loss.max(0), color=color, alpha=0.1)
            ax_acc.fill_between(evals, dev_acc.min(0), dev_acc.max(0), color=color, alpha=0.15)
    ax_loss.set(xlabel="step", ylabel="loss", title="train loss (raw, smoothed) and dev loss")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="dev accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, *(path.with_suffix(f".{suffix}") for suffix in formats))


def plot_diagnostics(
    grad_norms: dict[str, dict[int, float]], lesion: dict[str, float], path: Path, title: str = ""
) -> Path:
    """Two panels of the residual study: each stage's gradient norm per step (log scale; vanishing
    gradients show as early stages far below the head), and the test accuracy with each block
    bypassed (`lesion`: block -> accuracy, `none` the intact network, drawn as a line). Writes
    `path` as PNG and returns it."""
    blocks = [name for name in lesion if name != "none"]
    fig, (ax_grad, ax_lesion) = plt.subplots(1, 2, figsize=(12 + 0.15 * max(0, len(blocks) - 12), 4.5))
    for index, (stage, series) in enumerate(grad_norms.items()):
        steps = sorted(series)
        ax_grad.plot(steps, [series[s] for s in steps], color=f"C{index}", marker=".", label=stage)
    ax_grad.set_yscale("log")
    ax_grad.set(xlabel="step", ylabel="gradient L2 norm", title="gradient norm per stage")
    ax_lesion.bar(range(len(blocks)), [lesion[b] for b in blocks], color="C0")
    ax_lesion.set_xticks(range(len(blocks)), blocks, rotation=90, fontsize=7)
    if "none" in lesion:
        ax_lesion.axhline(lesion["none"], color="C3", linestyle="--", label=f"intact {lesion['none']:.3f}")
    ax_lesion.set(ylim=(0, 1), ylabel="test accuracy", title="test accuracy with one block bypassed")
    for ax in (ax_grad, ax_lesion):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    path = path.with_suffix(".png")
    save_figure(fig, path)
    return path
