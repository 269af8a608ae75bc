"""Plain vs residual, answered from what MLflow recorded: curves, statistics, verdict, registry.

Runs are found in the store and vetted: their settings must match apart from the variant (and
the per-variant values their preset gives each), and each variant has one run per seed. Every
best-dev checkpoint is scored on the full 10,000-image dev split and the full 10,000-image test set
(the book's 200 images move by about 1.5 points between seeds, more than the effect it reports).
Full-dev accuracy decides everything: the verdict's statistic, the winning variant and the
champion; test accuracy is reported as a held-out figure that decides nothing. The alias
`champion` moves, under a lock, only to a model at least as good on dev as the one holding it.
"""

from __future__ import annotations

import csv
import functools
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
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnet_mnist import data as D
from resnet_mnist.config import FIELDS, ConfigError, TrainConfig, build_config, coerce
from resnet_mnist.errors import first_line
from resnet_mnist.evaluation import Evaluation, evaluate_model, plot_confusion, plot_mistakes
from resnet_mnist.history import History, read_history
from resnet_mnist.model import build_resnet
from resnet_mnist.plots import plot_curves
from resnet_mnist.stats import METRICS, VARIANTS, CompareError, Stats, statistics, verdict
from resnet_mnist.store import store_lock

DEFAULT_MODEL_NAME = "resnet18-mnist"
CHAMPION = "champion"


@dataclass
class RunSummary:
    """One training run as the comparison sees it."""

    run_id: str
    variant: str
    seed: int
    depth: int
    best_dev_accuracy: float
    test_accuracy: float
    test_loss: float
    dev_accuracy_full: float
    dev_loss_full: float
    test_accuracy_full: float
    test_loss_full: float
    param_count: int
    macs: int
    train_time_s: float
    history: History = field(repr=False)


# -- finding and training runs ------------------------------------------------------------------

def _quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def variant_of(run: Run) -> str | None:
    return run.data.tags.get("variant") or run.data.params.get("variant")


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


# -- which runs may be compared -----------------------------------------------------------------

#: Params that say which run of a pair it is, or where and how it ran, not what it learned; never
#: part of a run's settings. (The per-process batch sizes follow from batch_size and world_size.)
NOT_SETTINGS = frozenset({"use_residual", "variant", "seed", "device", "data_root", "backend",
                          "global_batch_size", "per_rank_batch_size"})
NOT_LOGGED = "(not logged)"


@functools.lru_cache(maxsize=32)
def per_variant_values(preset: str) -> dict[str, tuple[str, str]]:
    """The settings a preset gives each variant its own value of: name -> (plain, residual) as
    text; empty for a preset that cannot be read (e.g. `custom`)."""
    try:
        plain, residual = (build_config(preset, use_residual).params()
                           for use_residual in (False, True))
    except ConfigError:
        return {}
    return {k: (str(plain[k]), str(residual[k])) for k in plain
            if k not in NOT_SETTINGS and plain[k] != residual[k]}


def _as_text(name: str, value: str) -> str:
    """A logged param as comparable text: `2e-2` and `0.02` are one learning rate."""
    if name not in FIELDS:
        return value
    try:
        return str(coerce(name, value))
    except ValueError:
        return value


def settings(run: Run) -> dict[str, str]:
    """What a run was trained with, as text, apart from its variant and seed.

    A setting the run does not record (it predates the setting) holds its default. A per-variant
    setting of the run's preset that kept the preset's value for the run's variant reads
    `<preset> preset, per variant`, so the plain and residual runs of one preset match while a run
    trained with an override does not.
    """
    preset = Path(run.data.params.get("preset", "custom")).stem
    residual = variant_of(run) == "residual"
    per_variant = per_variant_values(preset)
    defaults = {k: str(v) for k, v in TrainConfig().params().items()}
    out = {}
    for name in sorted((set(run.data.params) | set(defaults)) - NOT_SETTINGS):
        logged = run.data.params.get(name)
        value = defaults[name] if logged is None else _as_text(name, logged)
        if name == "preset":
            value = preset
        elif name in per_variant and value == per_variant[name][residual]:
            value = f"{preset} preset, per variant"
        out[name] = value
    return out


def _label(run: Run) -> str:
    return f"{variant_of(run)} {run.info.run_id[:8]}"


def differences(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """The settings on which `runs` disagree: name -> value -> the runs that hold it."""
    each = [(run, settings(run)) for run in runs]
    names = sorted(set().union(*(s for _, s in each)))
    out = {}
    for name in names:
        by_value: dict[str, list[Run]] = {}
        for run, s in each:
            by_value.setdefault(s.get(name, NOT_LOGGED), []).append(run)
        if len(by_value) > 1:
            out[name] = by_value
    return out


def describe(diff: dict[str, dict[str, list[Run]]]) -> str:
    """`lr: 0.02 (residual 1a2b3c4d) vs smoke preset... (plain 9f8e7d6c)`, one part a setting."""
    return "; ".join(
        f"{name}: " + " vs ".join(f"{value} ({', '.join(map(_label, runs))})"
                                  for value, runs in by_value.items())
        for name, by_value in diff.items())


def newest_per_seed(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """One run per variant and seed, the newest by start time; the older duplicates set apart.

    A run id given twice counts once. Returns (kept in the given order, set aside).
    """
    unique = list({r.info.run_id: r for r in runs}.values())
    newest: dict[tuple[str | None, str | None], Run] = {}
    for run in sorted(unique, key=lambda r: r.info.start_time or 0, reverse=True):
        newest.setdefault((variant_of(run), run.data.params.get("seed")), run)
    kept = {r.info.run_id for r in newest.values()}
    return ([r for r in unique if r.info.run_id in kept],
            [r for r in unique if r.info.run_id not in kept])


@dataclass
class Vetted:
    """The runs a comparison uses, the duplicates it set aside, and any settings that differ."""

    runs: list[Run]
    set_aside: list[Run]
    mismatch: dict[str, dict[str, list[Run]]]


def vet(runs: list[Run], allow_mismatch: bool = False) -> Vetted:
    """Refuse what cannot be compared honestly.

    Every run must be a training run. Duplicates, two runs of one variant with one seed, are
    handled by keeping the newest and setting the older ones aside (the verdict names them), so
    that neither the pairing by seed nor a mean counts one seed twice. Runs whose settings differ
    (see `settings`) are refused with the settings and values that differ, unless
    `allow_mismatch`: then the differences are returned, to be stated in the verdict and a tag.
    The runs come back plain first, each variant by seed.
    """
    for run in runs:
        if variant_of(run) not in VARIANTS:
            raise CompareError(f"run {run.info.run_id} is not a training run (no variant tag)")
    kept, set_aside = newest_per_seed(runs)
    kept.sort(key=lambda r: (VARIANTS.index(variant_of(r)), int(r.data.params.get("seed", -1))))
    mismatch = differences(kept)
    if mismatch and not allow_mismatch:
        raise CompareError(
            f"the selected runs differ in more than the variant, so their difference would not be "
            f"the shortcuts' alone: {describe(mismatch)}. Select runs trained with the same "
            "settings, or pass --allow-mismatch to compare them anyway (the verdict says so).")
    return Vetted(kept, set_aside, mismatch)


def newest_pair(runs: list[Run], allow_mismatch: bool = False) -> list[Run]:
    """The newest plain and residual runs whose settings match, from `runs` newest first.

    With no matching pair: the newest run of each variant under `allow_mismatch`, else a
    CompareError naming what differs between those two. A single variant comes back as it is
    (the statistics then say which one is missing).
    """
    keyed = [(run, tuple(settings(run).items())) for run in runs]
    for run, key in keyed:
        partner = next((r for r, k in keyed if k == key and variant_of(r) != variant_of(run)),
                       None)
        if partner is not None:
            pair = {variant_of(run): run, variant_of(partner): partner}
            return [pair[v] for v in VARIANTS]
    latest: dict[str | None, Run] = {}
    for run in runs:
        latest.setdefault(variant_of(run), run)
    newest = [latest[v] for v in VARIANTS if v in latest]
    if len(newest) == len(VARIANTS) and not allow_mismatch:
        raise CompareError(
            "no plain and residual runs here share their settings; the newest of each differ in "
            f"{describe(differences(newest))}. Train the missing variant with the same settings "
            "(`resnet-mnist compare --train-missing`), or pass --allow-mismatch.")
    return newest


def select_runs(
    client: MlflowClient, experiment: str, preset: str | None = None,
    run_ids: list[str] | None = None, where: str = "", allow_mismatch: bool = False,
) -> list[Run]:
    """Explicit ids, or a search string, or by default the newest FINISHED pair of the preset
    whose settings match (`newest_pair`).

    An unknown run id or a search string MLflow cannot parse is a CompareError naming it.
    Explicit and searched runs are vetted by `compare`.
    """
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
    return runs if where else newest_pair(runs, allow_mismatch)


# -- scoring runs on the full splits ------------------------------------------------------------

@dataclass(frozen=True)
class FullScores:
    """A best-dev checkpoint's loss and accuracy on the full dev split and the full test set."""

    dev_accuracy: float
    dev_loss: float
    test_accuracy: float
    test_loss: float


class FullSplitScorer:
    """Scores a run's best-dev checkpoint on all 10,000 dev images (the last 10,000 official
    training images) and all 10,000 official test images, once per run.

    What it finds is logged to the run itself at its `best_step`, so a second comparison reads it
    back instead of recomputing: `dev_accuracy_full`, `dev_loss_full`, `test_accuracy_full` and
    `test_loss_full` (also on the run's LoggedModel, with the dataset `mnist-dev` or `mnist-test`),
    per-digit `test_full/{precision,recall,f1}_digitN`, and `evaluation/`: the test confusion
    matrix (PNG and JSON) and the most confident test mistakes (PNG).
    """

    SPLITS = ("dev", "test")

    def __init__(self, client: MlflowClient, data_root: str | None = None) -> None:
        self.client = client
        self.data_root = data_root
        self.splits: dict[str, D.Split] = {}
        self.tensors: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _split(self, name: str, normalize: str) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.splits:
            self.splits = D.book_split(D.load(self.data_root), 1, D.DEV_SIZE, D.TEST_SIZE)
        if (name, normalize) not in self.tensors:
            self.tensors[name, normalize] = D.to_tensors(self.splits[name], normalize)
        return self.tensors[name, normalize]

    def _model(self, run: Run) -> torch.nn.Module:
        """The run's best-dev checkpoint in the network its params describe."""
        params, run_id = run.data.params, run.info.run_id
        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = mlflow.artifacts.download_artifacts(
                    run_id=run_id, artifact_path="checkpoints/best_model.pt", dst_path=tmp)
                state = torch.load(path, map_location="cpu", weights_only=True)
        except (MlflowException, OSError) as exc:
            raise CompareError(f"run {run_id} has no best-dev checkpoint to score "
                               f"(checkpoints/best_model.pt: {first_line(exc)})") from None
        depth = int(params.get("depth", 18))
        model = build_resnet(depth, use_residual=variant_of(run) == "residual")
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise CompareError(f"run {run_id}: its checkpoint is not a depth-{depth} "
                               f"{variant_of(run)} network ({first_line(exc)})") from None
        return model

    def __call__(self, run: Run) -> FullScores:
        metrics = dict(run.data.metrics)
        todo = [s for s in self.SPLITS
                if not {f"{s}_accuracy_full", f"{s}_loss_full"} <= set(metrics)]
        if todo:
            model = self._model(run)
            for split in todo:
                result = evaluate_model(model, *self._split(
                    split, run.data.params.get("normalize", "seed")))
                self._log(run, split, result)
                metrics |= {f"{split}_accuracy_full": result.accuracy,
                            f"{split}_loss_full": result.loss}
        return FullScores(metrics["dev_accuracy_full"], metrics["dev_loss_full"],
                          metrics["test_accuracy_full"], metrics["test_loss_full"])

    def _log(self, run: Run, split: str, ev: Evaluation) -> None:
        run_id, step = run.info.run_id, int(run.data.metrics.get("best_step", 0))
        now = int(time.time() * 1000)
        model_uri = run.data.tags.get("logged_model_uri", "")
        model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        size = D.DEV_SIZE if split == "dev" else D.TEST_SIZE
        digest = f"{D.dataset_digest()}-{split}{size}"
        scores = [Metric(key, value, now, step, model_id=model_id,
                         dataset_name=f"mnist-{split}" if model_id else None,
                         dataset_digest=digest if model_id else None)
                  for key, value in ((f"{split}_accuracy_full", ev.accuracy),
                                     (f"{split}_loss_full", ev.loss))]
        if split == "dev":
            self.client.log_batch(run_id, metrics=scores)
            return
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
            plot_mistakes(ev, self.splits["test"].images, folder / "mistakes.png")
            self.client.log_artifacts(run_id, tmp, "evaluation")


def summarize(client: MlflowClient, runs: list[Run], scorer: FullSplitScorer) -> list[RunSummary]:
    out = []
    for run in runs:
        m, p = run.data.metrics, run.data.params
        variant = variant_of(run)
        if variant not in VARIANTS:
            raise CompareError(f"run {run.info.run_id} is not a training run (no variant tag)")
        full = scorer(run)
        out.append(RunSummary(
            run_id=run.info.run_id, variant=variant, seed=int(p.get("seed", -1)),
            depth=int(p.get("depth", 18)), best_dev_accuracy=m["best_dev_accuracy"],
            test_accuracy=m["test_accuracy"], test_loss=m["test_loss"],
            dev_accuracy_full=full.dev_accuracy, dev_loss_full=full.dev_loss,
            test_accuracy_full=full.test_accuracy, test_loss_full=full.test_loss,
            param_count=int(m.get("param_count", 0)), macs=int(m.get("macs", 0)),
            train_time_s=m.get("train_time_s", float("nan")), history=read_history(client, run.info.run_id),
        ))
    return out


# -- outputs ------------------------------------------------------------------------------------

def plot(summaries: list[RunSummary], path: Path, title: str) -> list[Path]:
    """Plain vs residual; with several seeds, the mean curve and a min-max band per variant."""
    return plot_curves({v: [s.history for s in summaries if s.variant == v] for v in VARIANTS},
                       path, title)


COLUMNS = ("variant", "depth", "run id", "seeds", "dev acc (10k)", "best dev acc (book)",
           "test acc (book)", "test acc (10k)", "test loss (book)", "test loss (10k)", "params",
           "MACs", "train time s")


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

        rows.append([
            variant, ",".join(sorted({str(s.depth) for s in group})),
            ",".join(s.run_id[:8] for s in group), ",".join(str(s.seed) for s in group),
            cell("dev_accuracy_full"), cell("best_dev_accuracy"), cell("test_accuracy"),
            cell("test_accuracy_full"), cell("test_loss"), cell("test_loss_full"),
            f"{group[0].param_count:,}", f"{group[0].macs:,}", cell("train_time_s", fmt=".1f"),
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


# -- the champion -------------------------------------------------------------------------------

@dataclass
class Crowning:
    """Who holds `@champion` after a comparison (version and run), whether it moved, and why,
    in one line."""

    version: str
    run_id: str
    moved: bool
    note: str


def current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version of `name` holding `@champion`, or None when there is none (yet)."""
    try:
        found = client.search_registered_models(filter_string=f"name = {_quote(name)}")
    except MlflowException as exc:
        raise CompareError(f"cannot read registered model {name!r} ({first_line(exc)})") from None
    held = found[0].aliases.get(CHAMPION) if found else None
    return client.get_model_version(name, str(held)) if held is not None else None


def champion_dev_accuracy(
    client: MlflowClient, version: ModelVersion, scorer: FullSplitScorer
) -> float | None:
    """The full-dev accuracy of a registered version: its tag, else its run's metric, else its
    run scored now (a version registered before full-dev scoring); None when it has no run left
    to score."""
    if "dev_accuracy_full" in version.tags:
        return float(version.tags["dev_accuracy_full"])
    try:
        run = client.get_run(version.run_id) if version.run_id else None
    except MlflowException:
        run = None
    if run is None:
        return None
    if "dev_accuracy_full" in run.data.metrics:
        return run.data.metrics["dev_accuracy_full"]
    try:
        return scorer(run).dev_accuracy
    except CompareError:
        return None


def crown(
    client: MlflowClient, candidate: RunSummary, name: str, tags: dict[str, str],
    scorer: FullSplitScorer,
) -> Crowning:
    """Register `candidate` and move `@champion` to it, if its full-dev accuracy is at least that
    of the version holding the alias (a newer model wins a tie); otherwise nothing is registered.

    Reading the champion, comparing and moving the alias happen under the store's lock, so two
    concurrent comparisons leave the better model as champion whatever their order (a tracking
    server has no such lock). A candidate from other settings than the champion competes all the
    same: full-dev accuracy is one yardstick for every model. The run already holding the alias is
    not registered again.
    """
    acc = candidate.dev_accuracy_full
    with store_lock(mlflow.get_tracking_uri()):
        current = current_champion(client, name)
        held = None
        if current is not None:
            if current.run_id == candidate.run_id:
                return Crowning(str(current.version), current.run_id, False,
                                f"champion stays version {current.version}: it is this run "
                                f"already (dev {acc:.2%})")
            held = champion_dev_accuracy(client, current, scorer)
            if held is not None and held > acc:
                return Crowning(str(current.version), current.run_id, False,
                                f"champion stays version {current.version}: dev {held:.2%} > "
                                f"{acc:.2%} for run {candidate.run_id[:8]}")
        run = client.get_run(candidate.run_id)
        source = run.data.tags.get("logged_model_uri", f"runs:/{candidate.run_id}/model")
        version = str(mlflow.register_model(source, name, tags=tags).version)
        client.set_registered_model_alias(name, CHAMPION, version)
    if current is None:
        why = "the first champion"
    elif held is None:
        why = f"version {current.version} has no full-dev score"
    else:
        why = f"dev {acc:.2%} ≥ {held:.2%} for version {current.version}"
    return Crowning(version, candidate.run_id, True, f"champion is now version {version}: {why} "
                                   f"(run {candidate.run_id[:8]}, dev {acc:.2%})")


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


def compare(
    client: MlflowClient, runs: list[Run], out_dir: Path, experiment_id: str,
    model_name: str | None = DEFAULT_MODEL_NAME, data_root: str | None = None,
    run_id: str | None = None, allow_mismatch: bool = False,
) -> Comparison:
    """Vet, summarise, plot, tabulate, judge, log a `comparison` run, and crown the dev winner.

    `runs` are vetted first (`vet`: duplicates set aside, differing settings refused unless
    `allow_mismatch`). The candidate is the run of the winning variant with the highest full-dev
    accuracy; `crown` decides whether it takes `@champion`. The comparison run holds the
    variants' mean curves as step metrics, the statistics, the figure, table and verdict. It goes
    to `experiment_id` (the CLI uses `<experiment>-comparisons` so that it never crowds the
    training runs' charts), or is `run_id` (the run `mlflow run -e compare` made).
    """
    vetted = vet(runs, allow_mismatch)
    scorer = FullSplitScorer(client, data_root)
    summaries = summarize(client, vetted.runs, scorer)
    stats = statistics(summaries)
    text = verdict(stats)
    mismatch = describe(vetted.mismatch)
    if mismatch:
        text += (f" Caution (--allow-mismatch): the runs differ in more than the variant, so the "
                 f"difference is not the shortcuts' alone: {mismatch}.")
    set_aside = [r.info.run_id for r in vetted.set_aside]
    if set_aside:
        text += (" Set aside as older duplicates of a variant and seed (the newest is compared): "
                 + ", ".join(map(_label, vetted.set_aside)) + ".")
    rows = table_rows(summaries)
    out_dir.mkdir(parents=True, exist_ok=True)
    presets = sorted({r.data.tags.get("preset", "?") for r in vetted.runs})
    depths = ",".join(sorted({str(s.depth) for s in summaries}))
    title = f"ResNet{depths} on MNIST, plain vs residual ({', '.join(presets)})"
    files = plot(summaries, out_dir / "comparison", title) + write_table(rows, out_dir)
    ids = [s.run_id for s in summaries]
    tags = {"run_type": "comparison", "compared_run_ids": ",".join(ids),
            "preset": ",".join(presets), "depth": depths, "dev_winner": stats.dev_winner,
            "statistic": stats.metric, "selected_by": "dev_accuracy_full"}
    if mismatch:
        tags["settings_mismatch"] = mismatch[:5000]
    if set_aside:
        tags["set_aside_run_ids"] = ",".join(set_aside)
    crowning = None
    name = f"compare-{'-'.join(presets)}"
    started = mlflow.start_run(run_id=run_id) if run_id else mlflow.start_run(
        experiment_id=experiment_id, run_name=name)
    if run_id:
        client.update_run(run_id, name=name)
    with started as run:
        mlflow.set_tags(tags)
        log_mean_curves(client, run.info.run_id, summaries)
        mlflow.log_metrics({
            "diff_dev_accuracy_full": stats.diff, "diff_ci_low": stats.ci[0],
            "diff_ci_high": stats.ci[1], "n_plain": stats.n["plain"],
            "n_residual": stats.n["residual"],
            "diff_test_accuracy_full": (stats.mean["residual"]["test_accuracy_full"]
                                        - stats.mean["plain"]["test_accuracy_full"]),
            **{f"{v}_{k}_mean": stats.mean[v][k] for v in VARIANTS for k in METRICS},
        })
        if model_name:
            best = max((s for s in summaries if s.variant == stats.dev_winner),
                       key=lambda s: s.dev_accuracy_full)
            crowning = crown(client, best, model_name, {
                "variant": best.variant, "depth": str(best.depth), "preset": ",".join(presets),
                "dev_accuracy_full": f"{best.dev_accuracy_full:.4f}",
                "best_dev_accuracy": f"{best.best_dev_accuracy:.4f}",
                "test_accuracy_full": f"{best.test_accuracy_full:.4f}",
                "selected_by": "dev_accuracy_full",
                "compared_runs": ",".join(ids), "comparison_run": run.info.run_id,
            } | ({"settings_mismatch": mismatch[:5000]} if mismatch else {}), scorer)
            text += f" {crowning.note[0].upper()}{crowning.note[1:]}."
            mlflow.set_tags({"champion_version": crowning.version,
                             "champion_run": crowning.run_id,
                             "champion_moved": str(crowning.moved).lower(),
                             "champion_note": crowning.note})
        mlflow.set_tag("mlflow.note.content", text)
        (out_dir / "verdict.txt").write_text(text + "\n")
        files.append(out_dir / "verdict.txt")
        for path in files:
            mlflow.log_artifact(str(path), "comparison")
    return Comparison(
        run.info.run_id, summaries, stats, text, rows, files,
        f"models:/{model_name}@{CHAMPION}" if crowning else None,
        crowning.version if crowning else None, crowning.note if crowning else "",
        set_aside, mismatch)
