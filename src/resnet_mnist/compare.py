"""Plain vs residual, answered from what MLflow recorded: curves, statistics, verdict, registry.

Runs are found in the store, their full metric histories fetched, every best-dev checkpoint scored
on the full 10,000-image test set (the book's 200 test images move by about 1.5 points between
seeds, more than the effect it reports), and the winner, chosen by dev accuracy and never by test
accuracy, registered with the alias `champion`.
"""

from __future__ import annotations

import csv
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Run
from mlflow.tracking import MlflowClient

from resnet_mnist import data as D
from resnet_mnist.config import TrainConfig, build_config
from resnet_mnist.errors import first_line
from resnet_mnist.evaluation import Evaluation, evaluate_model, plot_confusion, plot_mistakes
from resnet_mnist.history import History, read_history
from resnet_mnist.model import ResNet18
from resnet_mnist.plots import plot_curves
from resnet_mnist.stats import METRICS, VARIANTS, CompareError, Stats, statistics, verdict

DEFAULT_MODEL_NAME = "resnet18-mnist"
CHAMPION = "champion"


@dataclass
class RunSummary:
    """One training run as the comparison sees it."""

    run_id: str
    variant: str
    seed: int
    best_dev_accuracy: float
    test_accuracy: float
    test_loss: float
    test_accuracy_full: float
    test_loss_full: float
    param_count: int
    macs: int
    train_time_s: float
    history: History = field(repr=False)


# -- finding and training runs ------------------------------------------------------------------

def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def train_runs(client: MlflowClient, experiment_ids: list[str], where: str = "") -> list[Run]:
    """FINISHED training runs, newest first, optionally narrowed by an MLflow search string."""
    query = "tags.run_type = 'train' and attributes.status = 'FINISHED'"
    if where:
        query += f" and {where}"
    return client.search_runs(experiment_ids, query, order_by=["attributes.start_time DESC"],
                              max_results=1000)


def same_params(run: Run, config: TrainConfig) -> bool:
    """Whether `run` was trained with exactly `config` (device aside)."""
    wanted = {k: str(v) for k, v in config.params().items() if k != "device"}
    return all(run.data.params.get(k) == v for k, v in wanted.items())


def seed_group(client: MlflowClient, experiment_id: str, preset: str, seeds: list[int]) -> str:
    """The parent run that holds one preset's seeds as children; created on first use."""
    seeds_tag = ",".join(map(str, seeds))
    found = client.search_runs(
        [experiment_id],
        f"tags.run_type = 'seed_group' and tags.preset = {_quote(preset)} "
        f"and tags.seeds = {_quote(seeds_tag)}",
        order_by=["attributes.start_time DESC"], max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(experiment_id, run_name=f"seeds-{preset}-{seeds_tag}",
                            tags={"run_type": "seed_group", "preset": preset, "seeds": seeds_tag})
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


TrainFn = Callable[[TrainConfig, str | None], str]


def ensure_runs(
    client: MlflowClient, experiment_id: str, preset: str, seeds: list[int] | None,
    train: TrainFn, overrides: dict | None = None, force: bool = False,
) -> list[str]:
    """Make sure each variant has a FINISHED run per seed with the preset's parameters.

    A run with the same parameters is reused unless `force`; missing ones are trained with
    `train(config, parent_run_id)`. With `seeds`, runs are children of one seed-group run.
    Returns the run ids, plain first.
    """
    parent = seed_group(client, experiment_id, preset, seeds) if seeds else None
    where = f"tags.`mlflow.parentRunId` = {_quote(parent)}" if parent else ""
    existing = train_runs(client, [experiment_id], where)
    ids = []
    for variant in VARIANTS:
        for seed in seeds or [None]:
            extra = (overrides or {}) | ({"seed": seed} if seed is not None else {})
            config = build_config(preset, variant == "residual", extra)
            match = None if force else next(
                (r for r in existing if same_params(r, config)), None)
            ids.append(match.info.run_id if match else train(config, parent))
    return ids


def select_runs(
    client: MlflowClient, experiment: str, preset: str | None = None,
    run_ids: list[str] | None = None, where: str = "",
) -> list[Run]:
    """Explicit ids, or a search string, or by default the newest FINISHED run per variant.

    An unknown run id or a search string MLflow cannot parse is a CompareError naming it.
    """
    from mlflow.exceptions import MlflowException

    if run_ids:
        runs = []
        for run_id in run_ids:
            try:
                runs.append(client.get_run(run_id))
            except MlflowException:
                raise CompareError(f"no run {run_id!r} in {mlflow.get_tracking_uri()} "
                                   "(--runs takes run ids, comma-separated)") from None
        return runs
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(f"experiment {experiment!r} does not exist: train first "
                           "(`resnet-mnist train` or `make compare`)")
    narrow = where or (f"tags.preset = {_quote(preset)}" if preset else "")
    try:
        runs = train_runs(client, [exp.experiment_id], narrow)
    except MlflowException as exc:
        raise CompareError(f"--filter {where!r} is not an MLflow search string MLflow accepts "
                           f"({first_line(exc)})") from None
    if where:
        return runs
    latest = {}
    for run in runs:
        latest.setdefault(run.data.tags.get("variant"), run)
    return [latest[v] for v in VARIANTS if v in latest]


# -- reading runs -------------------------------------------------------------------------------

class FullTestScorer:
    """Scores a run's best-dev checkpoint on all 10,000 official test images, once per run.

    What it finds is logged to the run itself, so a second comparison reads it back instead of
    recomputing: `test_accuracy_full` and `test_loss_full` (also on the run's LoggedModel, with
    the dataset), per-digit `test_full/{precision,recall,f1}_digitN`, and `evaluation/`: the
    confusion matrix (PNG and JSON) and the most confident mistakes (PNG).
    """

    def __init__(self, client: MlflowClient, data_root: str | None = None) -> None:
        self.client = client
        self.data_root = data_root
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.raw: np.ndarray | None = None

    def _test_split(self, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
        if normalize not in self.tensors:
            mnist = D.load(self.data_root)
            test = D.book_split(mnist, 1, 1, D.TEST_SIZE)["test"]
            self.raw = test.images
            self.tensors[normalize] = D.to_tensors(test, normalize)
        return self.tensors[normalize]

    def __call__(self, run: Run) -> tuple[float, float]:
        metrics = run.data.metrics
        if "test_accuracy_full" in metrics:
            return metrics["test_loss_full"], metrics["test_accuracy_full"]
        images, labels = self._test_split(run.data.params.get("normalize", "seed"))
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id, artifact_path="checkpoints/best_model.pt", dst_path=tmp)
            state = torch.load(path, map_location="cpu", weights_only=True)
        model = ResNet18(1, 10, use_residual=run.data.tags.get("variant") == "residual")
        model.load_state_dict(state)
        result = evaluate_model(model, images, labels)
        self._log(run, result)
        return result.loss, result.accuracy

    def _log(self, run: Run, ev: Evaluation) -> None:
        run_id, step = run.info.run_id, int(run.data.metrics.get("best_step", 0))
        now = int(time.time() * 1000)
        model_uri = run.data.tags.get("logged_model_uri", "")
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        digest = f"{D.dataset_digest()}-test{D.TEST_SIZE}"
        scores = [Metric(key, value, now, step, model_id=model_id,
                         dataset_name="mnist-test" if model_id else None,
                         dataset_digest=digest if model_id else None)
                  for key, value in (("test_accuracy_full", ev.accuracy),
                                     ("test_loss_full", ev.loss))]
        per_class = [Metric(f"test_full/{name}_digit{digit}", float(value), now, step)
                     for name, values in ev.per_class().items()
                     for digit, value in enumerate(values)]
        self.client.log_batch(run_id, metrics=scores + per_class)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            (folder / "confusion_matrix.json").write_text(json.dumps({
                "rows": "true digit", "columns": "predicted digit",
                "matrix": ev.confusion.tolist(), "accuracy": ev.accuracy}, indent=1))
            plot_confusion(ev, folder / "confusion_matrix.png",
                           f"{run.info.run_name}: {ev.accuracy:.2%} of 10,000 test digits")
            plot_mistakes(ev, self.raw, folder / "mistakes.png")
            self.client.log_artifacts(run_id, tmp, "evaluation")


def summarize(client: MlflowClient, runs: list[Run], scorer: FullTestScorer) -> list[RunSummary]:
    out = []
    for run in runs:
        m, p = run.data.metrics, run.data.params
        variant = run.data.tags.get("variant") or p.get("variant")
        if variant not in VARIANTS:
            raise CompareError(f"run {run.info.run_id} is not a training run (no variant tag)")
        loss_full, acc_full = scorer(run)
        out.append(RunSummary(
            run_id=run.info.run_id, variant=variant, seed=int(p.get("seed", -1)),
            best_dev_accuracy=m["best_dev_accuracy"], test_accuracy=m["test_accuracy"],
            test_loss=m["test_loss"], test_accuracy_full=acc_full, test_loss_full=loss_full,
            param_count=int(m.get("param_count", 0)), macs=int(m.get("macs", 0)),
            train_time_s=m.get("train_time_s", float("nan")), history=read_history(client, run.info.run_id),
        ))
    return out


# -- outputs ------------------------------------------------------------------------------------

def plot(summaries: list[RunSummary], path: Path, title: str) -> list[Path]:
    """Plain vs residual; with several seeds, the mean curve and a min-max band per variant."""
    return plot_curves({v: [s.history for s in summaries if s.variant == v] for v in VARIANTS},
                       path, title)


COLUMNS = ("variant", "run id", "seeds", "best dev acc", "test acc (book)", "test acc (10k)",
           "test loss (book)", "test loss (10k)", "params", "MACs", "train time s")


def table_rows(summaries: list[RunSummary]) -> list[list[str]]:
    """One row per variant (mean, and ± std over seeds when there are several)."""
    rows = []
    for variant in VARIANTS:
        group = [s for s in summaries if s.variant == variant]
        if not group:
            continue

        def cell(key: str, scale: float = 1.0, fmt: str = ".4f", group=group) -> str:
            values = np.array([getattr(s, key) for s in group]) * scale
            text = format(values.mean(), fmt)
            return text + (f" ± {format(values.std(ddof=1), fmt)}" if len(values) > 1 else "")

        rows.append([
            variant, ",".join(s.run_id[:8] for s in group),
            ",".join(str(s.seed) for s in group), cell("best_dev_accuracy"),
            cell("test_accuracy"), cell("test_accuracy_full"), cell("test_loss"),
            cell("test_loss_full"), f"{group[0].param_count:,}", f"{group[0].macs:,}",
            cell("train_time_s", fmt=".1f"),
        ])
    return rows


def write_table(rows: list[list[str]], out_dir: Path) -> list[Path]:
    md = out_dir / "comparison.md"
    md.write_text("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
                  + "".join("| " + " | ".join(r) + " |\n" for r in rows))
    csv_path = out_dir / "comparison.csv"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return [md, csv_path]


def register_champion(
    client: MlflowClient, summary: RunSummary, name: str, tags: dict[str, str]
) -> str:
    """Register the run's model as a new version of `name` and move the `champion` alias to it."""
    run = client.get_run(summary.run_id)
    source = run.data.tags.get("logged_model_uri", f"runs:/{summary.run_id}/model")
    version = mlflow.register_model(source, name,
                                    tags=tags | {"variant": summary.variant})
    client.set_registered_model_alias(name, CHAMPION, version.version)
    return str(version.version)


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
                    curves[f"{key}/{variant}_{stat}"] = list(zip(steps, reduce(values, 0),
                                                                 strict=True))
    return curves


def log_mean_curves(client: MlflowClient, run_id: str, summaries: list[RunSummary]) -> None:
    now = int(time.time() * 1000)
    metrics = [Metric(key, float(value), now, int(step))
               for key, points in mean_curves(summaries).items() for step, value in points]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start:start + 1000])


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


def compare(
    client: MlflowClient, runs: list[Run], out_dir: Path, experiment_id: str,
    model_name: str | None = DEFAULT_MODEL_NAME, data_root: str | None = None,
    run_id: str | None = None,
) -> Comparison:
    """Summarise, plot, tabulate, judge, log a `comparison` run, and register the dev winner.

    The comparison run holds the variants' mean curves as step metrics, the statistics, the
    figure, table and verdict. It goes to `experiment_id` (the CLI uses `<experiment>-comparisons`
    so that it never crowds the training runs' charts), or is `run_id` (the run
    `mlflow run -e compare` made).
    """
    summaries = summarize(client, runs, FullTestScorer(client, data_root))
    stats = statistics(summaries)
    text = verdict(stats)
    rows = table_rows(summaries)
    out_dir.mkdir(parents=True, exist_ok=True)
    presets = sorted({r.data.tags.get("preset", "?") for r in runs})
    title = f"ResNet18 on MNIST, plain vs residual ({', '.join(presets)})"
    files = plot(summaries, out_dir / "comparison", title) + write_table(rows, out_dir)
    (out_dir / "verdict.txt").write_text(text + "\n")
    files.append(out_dir / "verdict.txt")
    ids = [s.run_id for s in summaries]
    tags = {"run_type": "comparison", "compared_run_ids": ",".join(ids),
            "preset": ",".join(presets), "dev_winner": stats.dev_winner}
    champion_uri = version = None
    name = f"compare-{'-'.join(presets)}"
    started = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(
        experiment_id=experiment_id, run_name=name)
    if run_id:
        client.update_run(run_id, name=name)
    with started as run:
        mlflow.set_tags(tags)
        log_mean_curves(client, run.info.run_id, summaries)
        mlflow.log_metrics({
            "diff_test_accuracy_full": stats.diff, "diff_ci_low": stats.ci[0],
            "diff_ci_high": stats.ci[1], "n_plain": stats.n["plain"],
            "n_residual": stats.n["residual"],
            **{f"{v}_{k}_mean": stats.mean[v][k] for v in VARIANTS for k in METRICS},
        })
        mlflow.set_tag("mlflow.note.content", text)
        for path in files:
            mlflow.log_artifact(str(path), "comparison")
        if model_name:
            best = max((s for s in summaries if s.variant == stats.dev_winner),
                       key=lambda s: s.best_dev_accuracy)
            version = register_champion(client, best, model_name, {
                "preset": ",".join(presets), "best_dev_accuracy": f"{best.best_dev_accuracy:.4f}",
                "test_accuracy_full": f"{best.test_accuracy_full:.4f}",
                "compared_runs": ",".join(ids), "comparison_run": run.info.run_id,
            })
            champion_uri = f"models:/{model_name}@{CHAMPION}"
            mlflow.set_tags({"champion_version": version, "champion_run": best.run_id})
    return Comparison(run.info.run_id, summaries, stats, text, rows, files, champion_uri, version)
