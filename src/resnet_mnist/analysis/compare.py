"""Plain vs residual, answered from what MLflow recorded: curves, statistics, verdict, registry.

The runs are vetted (`selection`: settings must match apart from the variant, one run per variant
and seed) and every best-dev checkpoint is scored on the full 10,000-image dev and test splits
(`scoring`; the book's 200 images move by about 1.5 points between seeds, more than the effect it
reports). Full-dev accuracy decides everything: the verdict's statistic, the winning variant and
the champion (`registry`); test accuracy is a held-out figure that decides nothing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.registry import Crowning, crown
from resnet_mnist.analysis.scoring import FullSplitScorer
from resnet_mnist.analysis.selection import describe, run_label, variant_of, vet
from resnet_mnist.analysis.stats import METRICS, Stats, require_both_variants, statistics, verdict
from resnet_mnist.analysis.summary import VARIANTS, CompareError, RunSummary
from resnet_mnist.analysis.tables import write_table
from resnet_mnist.core.figures import plot_curves
from resnet_mnist.runtime.signals import safe_point, shielded
from resnet_mnist.tracking import names
from resnet_mnist.tracking.batches import log_metrics_batched
from resnet_mnist.tracking.experiments import experiment_id
from resnet_mnist.tracking.history import read_history
from resnet_mnist.tracking.lifecycle import ended
from resnet_mnist.tracking.names import CHAMPION, COMPARISONS, MODEL_NAME


def summarize(
    client: MlflowClient, runs: list[Run], scorer: FullSplitScorer, stop: threading.Event | None = None
) -> list[RunSummary]:
    out = []
    for run in runs:
        safe_point(stop)
        m, p = run.data.metrics, run.data.params
        variant = variant_of(run)
        if variant not in VARIANTS:
            raise CompareError(f"run {run.info.run_id} is not a training run (no variant tag)")
        full = scorer(run)
        out.append(
            RunSummary(
                run_id=run.info.run_id,
                variant=variant,
                seed=int(p.get("seed", -1)),
                depth=int(p.get("depth", 18)),
                best_dev_accuracy=m["best_dev_accuracy"],
                test_accuracy=m["test_accuracy"],
                test_loss=m["test_loss"],
                dev_accuracy_full=full.dev_accuracy,
                dev_loss_full=full.dev_loss,
                test_accuracy_full=full.test_accuracy,
                test_loss_full=full.test_loss,
                param_count=int(m.get("param_count", 0)),
                macs=int(m.get("macs", 0)),
                train_time_s=m.get("train_time_s", float("nan")),
                history=read_history(client, run.info.run_id),
            )
        )
    return out


# -- outputs ------------------------------------------------------------------------------------


def plot(summaries: list[RunSummary], path: Path, title: str) -> list[Path]:
    """Plain vs residual; with several seeds, the mean curve and a min-max band per variant."""
    return plot_curves({v: [s.history for s in summaries if s.variant == v] for v in VARIANTS}, path, title)


COLUMNS = (
    "variant",
    "depth",
    "run id",
    "seeds",
    "dev acc (10k)",
    "best dev acc (book)",
    "test acc (book)",
    "test acc (10k)",
    "test loss (book)",
    "test loss (10k)",
    "params",
    "MACs",
    "train time s",
)


def table_rows(summaries: list[RunSummary]) -> list[list[str]]:
    """One row per variant (mean, and ± std over seeds when there are several). Full-dev
    accuracy decides; the book's best dev accuracy and both test accuracies are reported."""
    rows = []
    for variant in VARIANTS:
        group = [s for s in summaries if s.variant == variant]
        if not group:
            continue

        def cell(key: str, scale: float = 1.0, fmt: str = ".4f", group=group) -> str:
            values = np.array([getattr(s, key) for s in group]) * scale
            text = format(values.mean(), fmt)
            return text + (f" ± {format(values.std(ddof=1), fmt)}" if len(values) > 1 else "")

        rows.append(
            [
                variant,
                ",".join(sorted({str(s.depth) for s in group})),
                ",".join(s.run_id[:8] for s in group),
                ",".join(str(s.seed) for s in group),
                cell("dev_accuracy_full"),
                cell("best_dev_accuracy"),
                cell("test_accuracy"),
                cell("test_accuracy_full"),
                cell("test_loss"),
                cell("test_loss_full"),
                f"{group[0].param_count:,}",
                f"{group[0].macs:,}",
                cell("train_time_s", fmt=".1f"),
            ]
        )
    return rows


def mean_curves(summaries: list[RunSummary]) -> dict[str, list[tuple[int, float]]]:
    """Per variant, the mean and the min-max band over seeds of train loss (every step) and dev
    accuracy and loss (every evaluation), keyed `train_loss/plain_mean` and so on, so that
    MLflow's chart view groups them by curve."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for variant in VARIANTS:
        group = [s.history for s in summaries if s.variant == variant]
        if not group:
            continue
        for key, steps_of, values_of in (
            ("train_loss", lambda h: h.steps, lambda h: h.train_loss),
            ("dev_accuracy", lambda h: h.eval_steps, lambda h: h.dev_accuracy),
            ("dev_loss", lambda h: h.eval_steps, lambda h: h.dev_loss),
        ):
            steps = min((steps_of(h) for h in group), key=len)
            values = np.array([values_of(h)[: len(steps)] for h in group]).reshape(len(group), -1)
            for stat, reduce in (("mean", np.mean), ("min", np.min), ("max", np.max)):
                if len(steps):
                    curves[f"{key}/{variant}_{stat}"] = list(zip(steps, reduce(values, 0), strict=True))
    return curves


def log_mean_curves(client: MlflowClient, run_id: str, summaries: list[RunSummary]) -> None:
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, int(step))
        for key, points in mean_curves(summaries).items()
        for step, value in points
    ]
    log_metrics_batched(client, run_id, metrics)


# -- the comparison -----------------------------------------------------------------------------


@dataclass
class Comparison:
    run_id: str
    summaries: list[RunSummary]
    stats: Stats
    verdict: str
    rows: list[list[str]]
    files: list[Path]
    champion_uri: str | None
    champion_version: str | None
    champion_note: str = ""
    set_aside: list[str] = field(default_factory=list)
    mismatch: str = ""


def comparisons_experiment(client: MlflowClient, selected: list[Run]) -> str:
    """The experiment a comparison run goes to: beside its training runs' own, suffixed."""
    trained_in = client.get_experiment(selected[0].info.experiment_id).name
    return experiment_id(f"{trained_in}{COMPARISONS}")


def compare(
    client: MlflowClient,
    runs: list[Run],
    out_dir: Path,
    experiment_id: str,
    model_name: str | None = MODEL_NAME,
    data_root: str | None = None,
    run_id: str | None = None,
    allow_mismatch: bool = False,
    stop: threading.Event | None = None,
    tuned: bool = False,
) -> Comparison:
    """Vet, summarise, plot, tabulate, judge, log a `comparison` run, and crown the dev winner.

    `runs` are vetted first (`vet`: duplicates set aside, differing settings refused unless
    `allow_mismatch`). The candidate is the run of the winning variant with the highest full-dev
    accuracy; `crown` decides whether it takes `@champion`. The comparison run holds the
    variants' mean curves as step metrics, the statistics, the figure, table and verdict. It goes
    to `experiment_id` (the CLI uses `<experiment>-comparisons` so that it never crowds the
    training runs' charts), or is `run_id` (the run `mlflow run -e compare` made). `tuned` runs
    (`compare --tuned`) differ in the settings each variant's search chose, by design: the
    verdict and the tag `tuned` say so.
    """
    vetted = vet(runs, allow_mismatch or tuned)
    require_both_variants(str(variant_of(r)) for r in vetted.runs)  # before minutes of scoring
    scorer = FullSplitScorer(client, data_root)
    summaries = summarize(client, vetted.runs, scorer, stop)
    stats = statistics(summaries)
    mismatch = describe(vetted.mismatch)
    set_aside = [r.info.run_id for r in vetted.set_aside]
    text = judged(stats, mismatch, vetted.set_aside, tuned)
    rows = table_rows(summaries)
    presets = sorted({r.data.tags.get(names.PRESET, "?") for r in vetted.runs})
    depths = ",".join(sorted({str(s.depth) for s in summaries}))
    title = f"ResNet{depths} on MNIST, plain vs residual ({', '.join(presets)})"
    files = figures_and_table(summaries, rows, title, out_dir)
    tags = comparison_tags(summaries, stats, presets, depths, mismatch, set_aside)
    if tuned:
        tags[names.TUNED] = "true"
    crowning = None
    name = f"compare-{'-'.join(presets)}"
    # No signal cuts a write to the comparison run in half (nor falls between creating it and
    # guarding its end); a stop asked for meanwhile is honoured between the writes, and the run
    # then ends KILLED.
    with shielded():
        run = (
            mlflow.start_run(run_id=run_id)
            if run_id
            else mlflow.start_run(experiment_id=experiment_id, run_name=name)
        )
        if run_id:
            client.update_run(run_id, name=name)
        with ended(run.info.run_id):
            safe_point(stop)
            mlflow.set_tags(tags)
            log_mean_curves(client, run.info.run_id, summaries)
            mlflow.log_metrics(statistics_metrics(stats))
            safe_point(stop)
            if model_name:
                crowning = crown_best(client, summaries, stats, model_name, tags, run.info.run_id, scorer)
                text += f" {crowning.note[0].upper()}{crowning.note[1:]}."
            safe_point(stop)
            mlflow.set_tag(names.NOTE, text)
            (out_dir / "verdict.txt").write_text(text + "\n")
            files.append(out_dir / "verdict.txt")
            for path in files:
                mlflow.log_artifact(str(path), "comparison")
    return Comparison(
        run.info.run_id,
        summaries,
        stats,
        text,
        rows,
        files,
        f"models:/{model_name}@{CHAMPION}" if crowning else None,
        crowning.version if crowning else None,
        crowning.note if crowning else "",
        set_aside,
        mismatch,
    )


def judged(stats: Stats, mismatch: str, set_aside: list[Run], tuned: bool = False) -> str:
    """The verdict, with what the reader must know about the runs behind it."""
    text = verdict(stats)
    if tuned:
        text += (
            " Each variant at its own tuned settings (--tuned): the difference is the shortcuts' "
            f"together with what each variant's search found for it ({mismatch or 'the same settings'})."
        )
    elif mismatch:
        text += (
            f" Caution (--allow-mismatch): the runs differ in more than the variant, so the "
            f"difference is not the shortcuts' alone: {mismatch}."
        )
    if set_aside:
        text += (
            " Set aside as older duplicates of a variant and seed (the newest is compared): "
            + ", ".join(map(run_label, set_aside))
            + "."
        )
    return text


def figures_and_table(
    summaries: list[RunSummary], rows: list[list[str]], title: str, out_dir: Path
) -> list[Path]:
    """The comparison's figure and table, written to `out_dir` (`comparison.*`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / "comparison"
    return plot(summaries, stem, title) + write_table(COLUMNS, rows, stem)


def comparison_tags(
    summaries: list[RunSummary],
    stats: Stats,
    presets: list[str],
    depths: str,
    mismatch: str,
    set_aside: list[str],
) -> dict[str, str]:
    """What the comparison run is and compared: tags to search and group by."""
    tags = {
        names.RUN_TYPE: names.COMPARISON,
        names.COMPARED_RUN_IDS: ",".join(s.run_id for s in summaries),
        names.PRESET: ",".join(presets),
        names.DEPTH: depths,
        names.DEV_WINNER: stats.dev_winner,
        names.STATISTIC: stats.metric,
        names.SELECTED_BY: names.SELECTION_METRIC,
    }
    if mismatch:
        tags[names.SETTINGS_MISMATCH] = mismatch[:5000]
    if set_aside:
        tags[names.SET_ASIDE_RUN_IDS] = ",".join(set_aside)
    return tags


def statistics_metrics(stats: Stats) -> dict[str, float]:
    """The comparison's numbers as the comparison run's metrics."""
    return {
        "diff_dev_accuracy_full": stats.diff,
        "diff_ci_low": stats.ci[0],
        "diff_ci_high": stats.ci[1],
        "n_plain": stats.n["plain"],
        "n_residual": stats.n["residual"],
        "diff_test_accuracy_full": (
            stats.mean["residual"]["test_accuracy_full"] - stats.mean["plain"]["test_accuracy_full"]
        ),
        **{f"{v}_{k}_mean": stats.mean[v][k] for v in VARIANTS for k in METRICS},
    }


def crown_best(
    client: MlflowClient,
    summaries: list[RunSummary],
    stats: Stats,
    model_name: str,
    tags: dict[str, str],
    comparison_run: str,
    scorer: FullSplitScorer,
) -> Crowning:
    """Offer the dev winner's best run to `@champion` (`crown` decides) and tag the comparison
    run with what became of it."""
    best = max((s for s in summaries if s.variant == stats.dev_winner), key=lambda s: s.dev_accuracy_full)
    version_tags = {
        names.VARIANT: best.variant,
        names.DEPTH: str(best.depth),
        names.PRESET: tags[names.PRESET],
        names.SELECTION_METRIC: f"{best.dev_accuracy_full:.4f}",
        "best_dev_accuracy": f"{best.best_dev_accuracy:.4f}",
        "test_accuracy_full": f"{best.test_accuracy_full:.4f}",
        names.SELECTED_BY: names.SELECTION_METRIC,
        names.COMPARED_RUNS: tags[names.COMPARED_RUN_IDS],
        names.COMPARISON_RUN: comparison_run,
    } | ({names.SETTINGS_MISMATCH: tags[names.SETTINGS_MISMATCH]} if names.SETTINGS_MISMATCH in tags else {})
    crowning = crown(client, best, model_name, version_tags, scorer)
    mlflow.set_tags(
        {
            names.CHAMPION_VERSION: crowning.version,
            names.CHAMPION_RUN: crowning.run_id,
            names.CHAMPION_MOVED: str(crowning.moved).lower(),
            names.CHAMPION_NOTE: crowning.note,
        }
    )
    return crowning
