"""Which runs a comparison may use: finding FINISHED training runs (or training the missing
ones), and vetting a selection. Runs are paired only when their settings match apart from the
variant (and the per-variant values their preset gives each); of two runs with the same variant
and seed the newest is kept and the older set aside, by name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.summary import VARIANTS, CompareError
from resnet_mnist.config.placement import PLACEMENT_PARAMS
from resnet_mnist.config.settings import FIELDS, ConfigError, TrainConfig, build_config, coerce
from resnet_mnist.runtime.errors import first_line
from resnet_mnist.tracking import names
from resnet_mnist.tracking.experiments import experiment_id as find_experiment
from resnet_mnist.tracking.lifecycle import same_params

# -- finding and training runs ------------------------------------------------------------------


def variant_of(run: Run) -> str | None:
    return run.data.tags.get(names.VARIANT) or run.data.params.get(names.VARIANT)


def train_runs(client: MlflowClient, experiment_ids: list[str], where: str = "") -> list[Run]:
    """FINISHED training runs, newest first, optionally narrowed by an MLflow search string."""
    query = names.runs_where(names.TRAIN, finished=True)
    if where:
        query += f" and {where}"
    return client.search_runs(
        experiment_ids, query, order_by=["attributes.start_time DESC"], max_results=1000
    )


def seed_group(client: MlflowClient, experiment_id: str, preset: str, seeds: list[int]) -> str:
    """The parent run that holds one preset's seeds as children; created on first use."""
    seeds_tag = ",".join(map(str, seeds))
    found = client.search_runs(
        [experiment_id],
        names.runs_where(names.SEED_GROUP, {names.PRESET: preset, names.SEEDS: seeds_tag}),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    run = client.create_run(
        experiment_id,
        run_name=f"seeds-{preset}-{seeds_tag}",
        tags={names.RUN_TYPE: names.SEED_GROUP, names.PRESET: preset, names.SEEDS: seeds_tag},
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


TrainFn = Callable[[TrainConfig, str | None], str]


@dataclass(frozen=True)
class Tuned:
    """A variant's tuned settings: the newest complete search of the preset for it."""

    tune_run_id: str
    settings: dict[str, Any]


def tuned_settings(client: MlflowClient, preset: str) -> dict[str, Tuned]:
    """Each variant's settings from its newest complete `tune` search of exactly `preset` (its
    best trial trained the preset's settings apart from the searched ones); a CompareError
    naming the command when a variant has none."""
    exp = client.get_experiment_by_name(names.TUNE_EXPERIMENT)
    out = {}
    for variant in VARIANTS:
        base = build_config(preset, variant == "residual")
        query = (
            names.runs_where(names.TUNE, {names.PRESET: base.preset, names.ARCHITECTURE: base.architecture})
            + f" and tags.`{names.TUNE_STATUS}` = 'complete'"
        )
        runs = (
            []
            if exp is None
            else client.search_runs(
                [exp.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=50
            )
        )
        found = next((t for r in runs if (t := _tuned(client, r, base)) is not None), None)
        if found is None:
            raise CompareError(
                f"no complete tune search of preset {preset!r} for the {variant} network in "
                f"experiment {names.TUNE_EXPERIMENT!r}: run `resnet-mnist tune --preset {preset} "
                f"--use-residual {str(variant == 'residual').lower()}` first"
            )
        out[variant] = found
    return out


def _tuned(client: MlflowClient, tune_run: Run, base: TrainConfig) -> Tuned | None:
    """The search's best settings, if its best trial trained `base` apart from them."""
    tags = tune_run.data.tags
    if names.TUNE_BEST_SETTINGS not in tags or names.TUNE_BEST_RUN not in tags:
        return None
    chosen = {k: coerce(k, v) for k, v in json.loads(tags[names.TUNE_BEST_SETTINGS]).items()}
    best = client.get_run(tags[names.TUNE_BEST_RUN])
    trained = dataclasses.replace(base, **chosen, seed=int(best.data.params.get("seed", base.seed)))
    return Tuned(tune_run.info.run_id, chosen) if same_params(best, trained) else None


def ensure_runs(
    client: MlflowClient,
    experiment_id: str,
    preset: str,
    seeds: list[int] | None,
    train: TrainFn,
    overrides: dict | None = None,
    force: bool = False,
    per_variant: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Make sure each variant has a FINISHED run per seed with the preset's parameters (and
    `per_variant`'s own settings for it, a tuned comparison's).

    A run with the same parameters is reused unless `force`; missing ones are trained with
    `train(config, parent_run_id)`. With `seeds`, runs are children of one seed-group run.
    Returns the run ids, plain first.
    """
    parent = seed_group(client, experiment_id, preset, seeds) if seeds else None
    where = f"tags.`{names.PARENT_RUN_ID}` = {names.quote(parent)}" if parent else ""
    existing = train_runs(client, [experiment_id], where)
    ids = []
    for variant in VARIANTS:
        for seed in list[int | None](seeds) if seeds else [None]:
            extra = (
                (overrides or {})
                | (per_variant or {}).get(variant, {})
                | ({"seed": seed} if seed is not None else {})
            )
            config = build_config(preset, variant == "residual", extra)
            match = None if force else next((r for r in existing if same_params(r, config)), None)
            ids.append(match.info.run_id if match else train(config, parent))
    return ids


# -- which runs may be compared -----------------------------------------------------------------

#: Params that say which run of a pair it is, or where and how it ran (`PLACEMENT_PARAMS`), not
#: what it learned; never part of a run's settings.
NOT_SETTINGS = frozenset({"use_residual", "variant", "seed"}) | PLACEMENT_PARAMS
NOT_LOGGED = "(not logged)"


@functools.lru_cache(maxsize=32)
def per_variant_values(preset: str) -> dict[str, tuple[str, str]]:
    """The settings a preset gives each variant its own value of: name -> (plain, residual) as
    text; empty for a preset that cannot be read (e.g. `custom`)."""
    try:
        plain, residual = (build_config(preset, use_residual).params() for use_residual in (False, True))
    except ConfigError:
        return {}
    return {
        k: (str(plain[k]), str(residual[k]))
        for k in plain
        if k not in NOT_SETTINGS and plain[k] != residual[k]
    }


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


def run_label(run: Run) -> str:
    return f"{variant_of(run)} {run.info.run_id[:8]}"


def differences(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """The settings on which `runs` disagree: name -> value -> the runs that hold it."""
    each = [(run, settings(run)) for run in runs]
    out = {}
    for name in sorted(set().union(*(s for _, s in each))):
        by_value: dict[str, list[Run]] = {}
        for run, s in each:
            by_value.setdefault(s.get(name, NOT_LOGGED), []).append(run)
        if len(by_value) > 1:
            out[name] = by_value
    return out


def describe(diff: dict[str, dict[str, list[Run]]]) -> str:
    """`lr: 0.02 (residual 1a2b3c4d) vs smoke preset... (plain 9f8e7d6c)`, one part a setting."""
    return "; ".join(
        f"{name}: "
        + " vs ".join(f"{value} ({', '.join(map(run_label, runs))})" for value, runs in by_value.items())
        for name, by_value in diff.items()
    )


def newest_per_seed(runs: list[Run]) -> tuple[list[Run], list[Run]]:
    """One run per variant and seed, the newest by start time; the older duplicates set apart.

    A run id given twice counts once. Returns (kept in the given order, set aside).
    """
    unique = list({r.info.run_id: r for r in runs}.values())
    newest: dict[tuple[str | None, str | None], Run] = {}
    for run in sorted(unique, key=lambda r: r.info.start_time or 0, reverse=True):
        newest.setdefault((variant_of(run), run.data.params.get("seed")), run)
    kept = {r.info.run_id for r in newest.values()}
    return ([r for r in unique if r.info.run_id in kept], [r for r in unique if r.info.run_id not in kept])


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
            "settings, or pass --allow-mismatch to compare them anyway (the verdict says so)."
        )
    return Vetted(kept, set_aside, mismatch)


def newest_pair(runs: list[Run], allow_mismatch: bool = False) -> list[Run]:
    """The newest plain and residual runs whose settings match, from `runs` newest first.

    With no matching pair: the newest run of each variant under `allow_mismatch`, else a
    CompareError naming what differs between those two. A single variant comes back as it is
    (the statistics then say which one is missing).
    """
    keyed = [(run, tuple(settings(run).items())) for run in runs]
    for run, key in keyed:
        partner = next((r for r, k in keyed if k == key and variant_of(r) != variant_of(run)), None)
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
            "(`resnet-mnist compare --train-missing`), or pass --allow-mismatch."
        )
    return newest


def select_runs(
    client: MlflowClient,
    experiment: str,
    preset: str | None = None,
    run_ids: list[str] | None = None,
    where: str = "",
    allow_mismatch: bool = False,
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
                raise CompareError(
                    f"no run {run_id!r} in {mlflow.get_tracking_uri()} "
                    "(--runs takes run ids, comma-separated)"
                ) from None
        return runs
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise CompareError(
            f"experiment {experiment!r} does not exist: train first (`resnet-mnist train` or `make compare`)"
        )
    narrow = where or (f"tags.{names.PRESET} = {names.quote(preset)}" if preset else "")
    try:
        runs = train_runs(client, [exp.experiment_id], narrow)
    except MlflowException as exc:
        raise CompareError(
            f"--filter {where!r} is not an MLflow search string MLflow accepts ({first_line(exc)})"
        ) from None
    return runs if where else newest_pair(runs, allow_mismatch)


def choose_runs(
    client: MlflowClient,
    experiment: str,
    preset: str,
    *,
    run_ids: list[str] | None = None,
    where: str = "",
    seeds: list[int] | None = None,
    train_missing: bool = False,
    force: bool = False,
    allow_mismatch: bool = False,
    train: TrainFn | None = None,
    tuned: dict[str, Tuned] | None = None,
) -> list[Run]:
    """The runs a comparison uses: exactly `run_ids`, or those `where` finds, or (with seeds,
    `train_missing`, `force` or `tuned` settings) the preset's runs with any missing one trained
    by `train`, or else the newest matching runs of the preset. A CompareError when there are
    none."""
    if run_ids:
        selected = select_runs(client, experiment, run_ids=run_ids)
    elif where:
        selected = select_runs(client, experiment, where=where)
    elif seeds or train_missing or force or tuned:
        if train is None:
            raise ValueError("training missing runs needs a train function")
        per_variant = {v: t.settings for v, t in (tuned or {}).items()}
        exp_id = find_experiment(experiment)
        ids = ensure_runs(client, exp_id, preset, seeds, train, force=force, per_variant=per_variant)
        selected = [client.get_run(i) for i in ids]
    else:
        selected = select_runs(client, experiment, preset, allow_mismatch=allow_mismatch)
    if not selected:
        raise CompareError(
            f"no FINISHED training runs to compare in {experiment!r} (preset "
            f"{preset!r}); run `make compare` or `resnet-mnist compare --train-missing`"
        )
    return selected
