"""The study's answer, read back from its finished cells: He et al.'s Fig. 6 for these networks,
loss and accuracy against depth with intervals over seeds, the block diagnostics, a table and a
verdict per depth, all logged to the study run.

The measures are the ones the question needs: the final training loss (the mean loss of the last
epoch: does the network fit its training data? the degradation problem is about exactly that) and
accuracy on all 10,000 dev images (does it generalise?). Test accuracy is reported and decides
nothing. Intervals are 95 % t intervals over seeds; plain and residual are paired by seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.stats import Interval, t_interval, welch_interval
from resnet_mnist.analysis.tables import write_table
from resnet_mnist.config.space import VARIANTS
from resnet_mnist.core.figures import save_figure, smooth
from resnet_mnist.study.execution import StudyHome, cells_of
from resnet_mnist.study.spec import StudySpec, cell_key, choose_lr
from resnet_mnist.tracking import names
from resnet_mnist.tracking.batches import log_metrics_batched
from resnet_mnist.tracking.history import read_history

DIAGNOSTIC_PREFIXES = ("grad_norm/", "init/", "lesion/")


@dataclass
class Cell:
    """One finished training run of the grid, as the report sees it."""

    run_id: str
    depth: int
    variant: str
    lr: float
    seed: int
    phase: str
    final_train_loss: float
    dev_accuracy: float
    dev_size: int
    test_accuracy: float
    param_count: int
    train_time_s: float
    diagnostics: dict[str, float] = field(default_factory=dict)
    steps: list[int] = field(default_factory=list, repr=False)
    train_loss: list[float] = field(default_factory=list, repr=False)

    @property
    def group(self) -> str:
        return f"resnet{self.depth}-{self.variant}"


def to_cell(run: Run) -> Cell:
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    return Cell(
        run_id=run.info.run_id,
        depth=int(p.get("depth", 18)),
        variant=t.get("variant", "?"),
        lr=float(p["lr"]),
        seed=int(p["seed"]),
        phase=t.get("study.phase", ""),
        final_train_loss=m.get("train_epoch_loss", math.nan),
        dev_accuracy=m.get("best_dev_accuracy", math.nan),
        dev_size=int(p.get("dev_size", 0)),
        test_accuracy=m.get("test_accuracy", math.nan),
        param_count=int(m.get("param_count", 0)),
        train_time_s=m.get("train_time_s", math.nan),
        diagnostics={k: v for k, v in m.items() if k.startswith(DIAGNOSTIC_PREFIXES)},
    )


@dataclass
class DepthResult:
    """Plain against residual at one depth, at each variant's chosen rate."""

    depth: int
    lr: dict[str, float]
    cells: dict[str, list[Cell]]
    train_loss: dict[str, Interval]
    dev_accuracy: dict[str, Interval]
    #: plain - residual final training loss, paired by seed
    loss_gap: Interval
    #: residual - plain full-dev accuracy, paired by seed
    accuracy_gap: Interval


def paired(cells: dict[str, list[Cell]], key: str, sign: int) -> Interval:
    by_seed = {v: {c.seed: getattr(c, key) for c in cells[v]} for v in VARIANTS}
    seeds = sorted(set(by_seed["plain"]) & set(by_seed["residual"]))
    return t_interval([sign * (by_seed["plain"][s] - by_seed["residual"][s]) for s in seeds])


def analyse(spec: StudySpec, cells: list[Cell]) -> tuple[list[DepthResult], list[Cell]]:
    """Per depth, the cells at each variant's chosen rate and their statistics; also the rate
    search cells (seed 0 at every rate)."""
    search = [c for c in cells if c.seed == spec.seeds[0] and c.lr in spec.lrs]
    results = []
    for depth in sorted(spec.depths):
        lr, chosen = {}, {}
        for variant in VARIANTS:
            group = [c for c in cells if c.depth == depth and c.variant == variant]
            lr[variant] = choose_lr(
                {c.lr: c.dev_accuracy for c in search if c.depth == depth and c.variant == variant}
            )
            by_seed = {c.seed: c for c in group if c.lr == lr[variant]}
            chosen[variant] = [by_seed[s] for s in spec.seeds if s in by_seed]
        results.append(
            DepthResult(
                depth,
                lr,
                chosen,
                {v: t_interval([c.final_train_loss for c in chosen[v]]) for v in VARIANTS},
                {v: t_interval([c.dev_accuracy for c in chosen[v]]) for v in VARIANTS},
                paired(chosen, "final_train_loss", 1),
                paired(chosen, "dev_accuracy", -1),
            )
        )
    return results, search


def missing_cells(spec: StudySpec, cells: list[Cell]) -> int:
    """How many cells of the grid have not finished (the rate search must be complete first)."""
    have = {(c.depth, c.variant, c.lr, c.seed) for c in cells}
    missing = 0
    for group in spec.groups():
        variant = "residual" if group.use_residual else "plain"
        searched = {
            lr: next(
                (
                    c
                    for c in cells
                    if (c.depth, c.variant, c.lr, c.seed) == (group.depth, variant, lr, spec.seeds[0])
                ),
                None,
            )
            for lr in spec.lrs
        }
        missing += sum(c is None for c in searched.values())
        if any(c is None for c in searched.values()):
            missing += len(spec.seeds) - 1
            continue
        lr = choose_lr({lr: c.dev_accuracy for lr, c in searched.items() if c is not None})
        missing += sum((group.depth, variant, lr, s) not in have for s in spec.seeds[1:])
    return missing


# -- the verdict --------------------------------------------------------------------------------


def verdict(results: list[DepthResult]) -> str:
    """One paragraph per depth, then the degradation problem: deep against shallow, per variant."""
    lines = []
    for r in results:
        gap, acc = r.loss_gap, r.accuracy_gap
        loss = {v: r.train_loss[v].mean for v in VARIANTS}
        direction = "higher" if gap.mean >= 0 else "lower"
        text = (
            f"At {r.depth} layers the plain network's final training loss is "
            f"{abs(gap.mean):.3f} {direction} than the residual network's "
            f"({loss['plain']:.3f} against {loss['residual']:.3f}; plain - residual "
            f"{gap.text('+.3f')}). "
        )
        if gap.excludes_zero():
            text += "That is larger than the seed-to-seed noise: " + (
                "shortcuts make this network easier to train. "
                if gap.mean > 0
                else "here the plain network fits its training data better. "
            )
        else:
            text += "That is within the seed-to-seed noise. "
        devs = {v: 100 * r.dev_accuracy[v].mean for v in VARIANTS}
        n_dev = next((c.dev_size for v in VARIANTS for c in r.cells[v]), 0)
        text += (
            f"Accuracy on the {n_dev:,} dev images: residual {devs['residual']:.2f} %, "
            f"plain {devs['plain']:.2f} %"
            f" (residual - plain {acc.text('+.2f', 100)} points"
            f"{'' if acc.excludes_zero() else ', within the noise'}). "
            f"Learning rates chosen on dev: plain {r.lr['plain']:g}, residual "
            f"{r.lr['residual']:g}."
        )
        lines.append(text)
    for shallow, deep in zip(results, results[1:], strict=False):  # He et al.'s question, depth by depth
        for variant in VARIANTS:
            change = welch_interval(
                [c.final_train_loss for c in deep.cells[variant]],
                [c.final_train_loss for c in shallow.cells[variant]],
            )
            worse = change.excludes_zero() and change.mean > 0
            better = change.excludes_zero() and change.mean < 0
            lines.append(
                f"{variant.capitalize()} networks from {shallow.depth} to {deep.depth} layers: "
                f"final training loss {shallow.train_loss[variant].mean:.3f} -> "
                f"{deep.train_loss[variant].mean:.3f} (deep - shallow {change.text('+.3f')}, "
                "Welch). "
                + (
                    "The deeper network trains worse: the degradation problem."
                    if worse and variant == "plain"
                    else "The deeper network trains worse."
                    if worse
                    else "The deeper network trains better."
                    if better
                    else "No difference beyond the noise."
                )
            )
    return "\n\n".join(lines)


# -- figures and tables -------------------------------------------------------------------------


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


TABLE = (
    "depth",
    "variant",
    "lr (chosen on dev)",
    "seeds",
    "final train loss",
    "dev acc",
    "test acc",
    "params",
    "train time s",
    "run ids",
)
SEARCH_TABLE = ("depth", "variant", "lr", "dev acc", "final train loss", "chosen", "run id")


def table_rows(results: list[DepthResult]) -> list[list[str]]:
    def cell(i: Interval, scale: float = 1.0, fmt: str = ".4f") -> str:
        if i.n < 2:
            return format(i.mean * scale, fmt)
        return f"{i.mean * scale:{fmt}} ± {(i.high - i.mean) * scale:{fmt}}"

    rows = []
    for r in results:
        for v in VARIANTS:
            cells = r.cells[v]
            rows.append(
                [
                    str(r.depth),
                    v,
                    f"{r.lr[v]:g}",
                    ",".join(str(c.seed) for c in cells),
                    cell(r.train_loss[v]),
                    cell(r.dev_accuracy[v], 100, ".2f") + " %",
                    f"{100 * np.mean([c.test_accuracy for c in cells]):.2f} %" if cells else "",
                    f"{cells[0].param_count:,}" if cells else "",
                    f"{np.mean([c.train_time_s for c in cells]):.1f}" if cells else "",
                    ",".join(c.run_id[:8] for c in cells),
                ]
            )
    return rows


def search_rows(results: list[DepthResult], search: list[Cell]) -> list[list[str]]:
    chosen = {(r.depth, v): r.lr[v] for r in results for v in VARIANTS}
    return [
        [
            str(c.depth),
            c.variant,
            f"{c.lr:g}",
            f"{100 * c.dev_accuracy:.2f} %",
            f"{c.final_train_loss:.4f}",
            "yes" if chosen.get((c.depth, c.variant)) == c.lr else "",
            c.run_id[:8],
        ]
        for c in sorted(search, key=lambda c: (c.depth, c.variant, c.lr))
    ]


# -- the report ---------------------------------------------------------------------------------


@dataclass
class Report:
    results: list[DepthResult]
    search: list[Cell]
    verdict: str
    rows: list[list[str]]
    files: list[Path]


def study_report(
    client: MlflowClient, experiment_id: str, study_run_id: str, spec: StudySpec, out_dir: Path
) -> Report:
    """Judge a finished grid and log everything to the study run (and to `out_dir`)."""
    cells = [to_cell(r) for r in cells_of(client, experiment_id, study_run_id)]
    results, search = analyse(spec, cells)
    for r in results:  # the curves of the cells the figure draws
        for cell in (c for v in VARIANTS for c in r.cells[v]):
            history = read_history(client, cell.run_id)
            cell.steps, cell.train_loss = history.steps, history.train_loss
    text = verdict(results)
    rows = table_rows(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [plot_fig6(results, out_dir / "fig6_train_loss.png"), plot_depth(results, out_dir / "depth.png")]
    diagnostics = plot_diagnostics(results, out_dir / "diagnostics.png")
    files += [diagnostics] if diagnostics else []
    files += write_table(TABLE, rows, out_dir / "study")
    files += write_table(SEARCH_TABLE, search_rows(results, search), out_dir / "lr_search")
    (out_dir / "verdict.md").write_text(f"# Study {spec.name}: where shortcuts matter\n\n{text}\n")
    files.append(out_dir / "verdict.md")
    _log(client, study_run_id, results, text, files)
    return Report(results, search, text, rows, files)


def _log(client: MlflowClient, run_id: str, results: list[DepthResult], text: str, files: list[Path]) -> None:
    """Metrics keyed so that MLflow's charts show them against depth (the step is the depth) and
    the mean training curves overlaid (the step is the training step)."""
    now = int(time.time() * 1000)
    metrics = []
    for r in results:
        for v in VARIANTS:
            metrics += [
                Metric(f"final_train_loss/{v}", r.train_loss[v].mean, now, r.depth),
                Metric(f"dev_accuracy_full/{v}", r.dev_accuracy[v].mean, now, r.depth),
            ]
            runs = [c for c in r.cells[v] if c.steps]
            if runs:
                n = min(len(c.steps) for c in runs)
                mean = np.mean([c.train_loss[:n] for c in runs], axis=0)
                metrics += [
                    Metric(f"train_loss/resnet{r.depth}_{v}", float(value), now, step)
                    for step, value in zip(runs[0].steps[:n], mean, strict=True)
                ]
        for key, interval in (
            ("loss_gap_plain_minus_residual", r.loss_gap),
            ("dev_gap_residual_minus_plain", r.accuracy_gap),
        ):
            metrics += [
                Metric(f"{key}/{stat}", value, now, r.depth)
                for stat, value in (
                    ("mean", interval.mean),
                    ("ci_low", interval.low),
                    ("ci_high", interval.high),
                )
                if math.isfinite(value)
            ]
    log_metrics_batched(client, run_id, metrics)
    client.set_tag(run_id, names.NOTE, text)
    client.set_tag(run_id, names.STUDY_STATUS, "complete")
    for path in files:
        client.log_artifact(run_id, str(path), "study")


def duplicated_cells(cells: list[Cell]) -> list[str]:
    """Cells of the grid with more than one FINISHED run: a grid that counts a cell twice is not
    judged (which run would stand for it?)."""
    runs: dict[str, list[str]] = {}
    for c in cells:
        runs.setdefault(cell_key(c.group, c.lr, c.seed), []).append(c.run_id)
    return [f"{key} ({', '.join(ids)})" for key, ids in sorted(runs.items()) if len(ids) > 1]


def unfinished(client: MlflowClient, home: StudyHome, spec: StudySpec) -> str | None:
    """None once every cell of the grid has exactly one FINISHED run; otherwise how many have
    none and how to train them, or which have several (the study run is tagged with the count)."""
    cells = [to_cell(r) for r in cells_of(client, home.experiment_id, home.run_id)]
    twice = duplicated_cells(cells)
    if twice:
        client.set_tag(home.run_id, names.STUDY_STATUS, f"{len(twice)} cells finished twice")
        return (
            f"{len(twice)} cells of the grid have more than one FINISHED run, so the grid is not "
            "judged: " + "; ".join(twice) + ". Delete the extra runs in the MLflow UI (or "
            "`mlflow runs delete`), then `--report-only`"
        )
    missing = missing_cells(spec, cells)
    if not missing:
        return None
    client.set_tag(home.run_id, names.STUDY_STATUS, f"{spec.cells() - missing}/{spec.cells()} cells")
    return (
        f"{missing} of {spec.cells()} cells have not finished (stopped, or failed); "
        f"rerun `resnet-mnist study --study {spec.name}` to train them, or `--report-only` "
        "once a study driven elsewhere has finished them"
    )
