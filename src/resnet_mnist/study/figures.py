"""The study's figures: He et al.'s Fig. 6 for these networks, loss and accuracy against depth
with intervals over seeds, and the block diagnostics (gradient norms, the lesion test)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from resnet_mnist.config.space import VARIANTS
from resnet_mnist.core.figures import save_figure, smooth
from resnet_mnist.study.results import DepthResult


def plot_fig6(results: list[DepthResult], path: Path) -> Path:
    """He et al.'s Fig. 6 for these networks: training loss per step, one colour per depth,
    plain dashed, residual solid (mean over seeds, smoothed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, variant, style in ((axes[0], "plain", "--"), (axes[1], "residual", "-")):
        for index, r in enumerate(results):
            runs = [c for c in r.cells[variant] if c.steps]
            if not runs:
                continue
            n = min(len(c.steps) for c in runs)
            mean = np.mean([c.train_loss[:n] for c in runs], axis=0)
            ax.plot(
                runs[0].steps[:n],
                smooth(list(mean), 15),
                linestyle=style,
                color=f"C{index}",
                label=f"{variant}-{r.depth}",
            )
        ax.set(xlabel="step", title=f"{variant} networks", yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("training loss (mean over seeds, smoothed)")
    fig.suptitle("Training loss by depth: plain (dashed) and residual (solid)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_depth(results: list[DepthResult], path: Path) -> Path:
    """Final training loss and full-dev accuracy against depth, 95 % intervals over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    depths = [r.depth for r in results]
    for variant, style, colour in (("plain", "--o", "C0"), ("residual", "-s", "C1")):
        for ax, key, scale in ((ax_loss, "train_loss", 1.0), (ax_acc, "dev_accuracy", 100.0)):
            intervals = [getattr(r, key)[variant] for r in results]
            mean = np.array([i.mean for i in intervals]) * scale
            err = (
                np.array([[i.mean - i.low, i.high - i.mean] if i.n >= 2 else [0, 0] for i in intervals]).T
                * scale
            )
            ax.errorbar(depths, mean, yerr=err, fmt=style, color=colour, capsize=4, label=variant)
    ax_loss.set(xlabel="depth (layers)", ylabel="final training loss", title="fit")
    n_dev = next((c.dev_size for r in results for v in VARIANTS for c in r.cells[v]), 0)
    ax_acc.set(
        xlabel="depth (layers)", ylabel=f"accuracy on {n_dev:,} dev digits (%)", title="generalisation"
    )
    for ax in (ax_loss, ax_acc):
        ax.set_xticks(depths)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    return path


def plot_diagnostics(results: list[DepthResult], path: Path) -> Path | None:
    """Per-stage gradient norms at initialisation and at the end of training, and the lesion
    test (test accuracy with one block bypassed) against the block's position, seed-0 cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    firsts = [(r, v, r.cells[v][0]) for r in results for v in VARIANTS if r.cells[v]]
    if not any(c.diagnostics for _, _, c in firsts):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for r, variant, cell in firsts:
        style = "--" if variant == "plain" else "-"
        colour = f"C{results.index(r)}"
        label = f"{variant}-{r.depth}"
        d = cell.diagnostics
        for ax, prefix in ((axes[0], "init/grad_norm/"), (axes[1], "grad_norm/")):
            stages = [k.removeprefix(prefix) for k in d if k.startswith(prefix)]
            stages.sort(key=_stage_order)
            if stages:
                ax.plot(stages, [d[prefix + s] for s in stages], style, marker="o", color=colour, label=label)
        blocks = sorted(
            (k.removeprefix("lesion/") for k in d if k.startswith("lesion/") and k != "lesion/none"),
            key=_block_order,
        )
        if blocks:
            x = np.linspace(0, 1, len(blocks)) if len(blocks) > 1 else np.zeros(1)
            axes[2].plot(
                x,
                [100 * d["lesion/" + b] for b in blocks],
                style,
                marker=".",
                color=colour,
                label=f"{label} (intact {100 * d.get('lesion/none', math.nan):.1f} %)",
            )
    axes[0].set(title="gradient norm per stage at initialisation", yscale="log")
    axes[1].set(title="gradient norm per stage at the last log step", yscale="log")
    axes[2].set(
        title="test accuracy with one block bypassed",
        xlabel="block position (0 = first)",
        ylabel="accuracy (%)",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _stage_order(name: str) -> tuple[int, str]:
    order = {"stem": 0, "head": 99}
    return (order.get(name, int(name.removeprefix("stage")) if name[5:].isdigit() else 50), name)


def _block_order(name: str) -> tuple[int, int]:
    stage, _, block = name.partition(".block")
    return (int(stage.removeprefix("stage") or 0), int(block or 0))
