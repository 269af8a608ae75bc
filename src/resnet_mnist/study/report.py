"""The study's answer, read back from its finished cells: He et al.'s Fig. 6 for these networks,
loss and accuracy against depth with intervals over seeds, the block diagnostics, a table and a
verdict per depth, all logged to the study run (the cells' statistics are `results`, the figures
`figures`).

The measures are the ones the question needs: the final training loss (the mean loss of the last
epoch: does the network fit its training data? the degradation problem is about exactly that) and
accuracy on all 10,000 dev images (does it generalise?). Test accuracy is reported and decides
nothing. Intervals are 95 % t intervals over seeds; plain and residual are paired by seed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.stats import Interval, welch_interval
from resnet_mnist.analysis.tables import write_table
from resnet_mnist.config.space import VARIANTS
from resnet_mnist.study.execution import StudyHome, cells_of
from resnet_mnist.study.figures import plot_depth, plot_diagnostics, plot_fig6
from resnet_mnist.study.results import Cell, DepthResult, analyse, duplicated_cells, missing_cells, to_cell
from resnet_mnist.study.spec import StudySpec
from resnet_mnist.study.tune_report import best_so_far, plot_best_so_far
from resnet_mnist.study.tuned import GroupSearch, group_searches, tuned_settings
from resnet_mnist.tracking import names
from resnet_mnist.tracking.batches import log_metrics_batched
from resnet_mnist.tracking.history import read_history

# -- the verdict --------------------------------------------------------------------------------


def settings_text(settings: dict[str, object]) -> str:
    """A group's chosen settings in a line: the grid's rate alone, or every tuned setting."""
    if set(settings) == {"lr"}:
        return f"{settings['lr']:g}"
    return ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in sorted(settings.items())
    )


def verdict(results: list[DepthResult], tuning: str = "") -> str:
    """One paragraph per depth, then the degradation problem: deep against shallow, per variant;
    a tuned study's budget first."""
    lines = [tuning] if tuning else []
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
            + (
                f"Settings each search chose on dev: plain {settings_text(r.settings['plain'])}; "
                f"residual {settings_text(r.settings['residual'])}."
                if tuning
                else f"Learning rates chosen on dev: plain {r.lr['plain']:g}, residual {r.lr['residual']:g}."
            )
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


# -- tables -------------------------------------------------------------------------------------


TABLE = (
    "depth",
    "variant",
    "chosen on dev",
    "seeds",
    "final train loss",
    "dev acc",
    "test acc",
    "params",
    "train time s",
    "run ids",
)
SEARCH_TABLE = ("depth", "variant", "lr", "dev acc", "final train loss", "chosen", "run id")
TUNING_TABLE = (
    "group",
    "trials",
    "pruned",
    "failed",
    "best dev acc (selection)",
    "chosen",
    "steps saved by pruning",
    "tune run",
)


def tuning_rows(searches: list[GroupSearch]) -> list[list[str]]:
    rows = []
    for s in searches:
        found, best = s.found, s.found.best if s.found else None
        rows.append(
            [
                s.group.name,
                str(len(found.trials)) if found else "0",
                str(found.pruned) if found else "",
                str(found.failed) if found else "",
                f"{100 * best.value:.2f} % (trial {best.number})" if best else "",
                settings_text(s.chosen) if s.chosen else "",
                f"{found.saved} of {found.all_steps}" if found else "",
                s.home.run_id if s.home else "",
            ]
        )
    return rows


def tuning_text(spec: StudySpec, searches: list[GroupSearch]) -> str:
    """The budget every group had, and what pruning saved over all the searches."""
    assert spec.tune is not None
    base = searches[0].spec.base
    found = [s.found for s in searches if s.found]
    trials = sum(len(f.trials) for f in found)
    pruned = sum(f.pruned for f in found)
    saved = sum(f.saved for f in found)
    steps = sum(f.all_steps for f in found)
    text = (
        f"Every (depth, variant) group was tuned with the same budget: {spec.tune.trials} trials of "
        f"{base.epochs} epochs ({base.total_steps()} steps), TPE over "
        f"{', '.join(searches[0].spec.space.names())} "
        f"(space {spec.tune.space}), each trial on selection seed {spec.tune.seed}, chosen by dev accuracy "
        f"on {base.dev_size:,} dev images; the seeds scored below "
        f"({', '.join(map(str, spec.seeds))}) chose nothing. "
    )
    if steps:
        text += (
            f"Pruning ({spec.tune.pruner}) stopped {pruned} of {trials} trials early and saved {saved:,} "
            f"of {steps:,} training steps ({saved / steps:.0%})."
        )
    return text


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
                    settings_text(r.settings[v]),
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
    searches = group_searches(client, spec, experiment_id) if spec.tune else []
    results, search = analyse(spec, cells, tuned_settings(searches))
    for r in results:  # the curves of the cells the figure draws
        for cell in (c for v in VARIANTS for c in r.cells[v]):
            history = read_history(client, cell.run_id)
            cell.steps, cell.train_loss = history.steps, history.train_loss
    text = verdict(results, tuning_text(spec, searches) if spec.tune else "")
    rows = table_rows(results)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = [plot_fig6(results, out_dir / "fig6_train_loss.png"), plot_depth(results, out_dir / "depth.png")]
    diagnostics = plot_diagnostics(results, out_dir / "diagnostics.png")
    files += [diagnostics] if diagnostics else []
    files += write_table(TABLE, rows, out_dir / "study")
    if spec.tune:
        curves = {s.group.name: best_so_far(s.found.trials) for s in searches if s.found}
        title = f"study {spec.name}: each group's search ({spec.tune.trials} trials)"
        files.append(plot_best_so_far(curves, out_dir / "tuning.png", title))
        files += write_table(TUNING_TABLE, tuning_rows(searches), out_dir / "tuning")
    else:
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


def unfinished(client: MlflowClient, home: StudyHome, spec: StudySpec) -> str | None:
    """None once every cell of the grid has exactly one FINISHED run; otherwise how many have
    none and how to train them, or which have several (the study run is tagged with the count)."""
    cells = [to_cell(r) for r in cells_of(client, home.experiment_id, home.run_id)]
    searches = group_searches(client, spec, home.experiment_id) if spec.tune else []
    twice = duplicated_cells(cells)
    if twice:
        client.set_tag(home.run_id, names.STUDY_STATUS, f"{len(twice)} cells finished twice")
        return (
            f"{len(twice)} cells of the grid have more than one FINISHED run, so the grid is not "
            "judged: " + "; ".join(twice) + ". Delete the extra runs in the MLflow UI (or "
            "`mlflow runs delete`), then `--report-only`"
        )
    tuned = tuned_settings(searches)
    missing = missing_cells(spec, cells, tuned)
    if not missing:
        return None
    searching = f" ({len(searches) - len(tuned)} searches not done)" if len(tuned) < len(searches) else ""
    client.set_tag(
        home.run_id, names.STUDY_STATUS, f"{spec.cell_count() - missing}/{spec.cell_count()} cells"
    )
    return (
        f"{missing} of {spec.cell_count()} cells have not finished{searching} (stopped, or failed); "
        f"rerun `resnet-mnist study --study {spec.name}` to train them, or `--report-only` "
        "once a study driven elsewhere has finished them"
    )
