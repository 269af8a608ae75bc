"""The registered model and its `@champion` alias, which moves only to a model at least as good
on the full dev split as the one holding it, under the store's lock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis.scoring import FullSplitScorer
from resnet_mnist.analysis.summary import CompareError
from resnet_mnist.runtime.errors import first_line
from resnet_mnist.tracking import names
from resnet_mnist.tracking.names import CHAMPION
from resnet_mnist.tracking.sqlite import store_lock

if TYPE_CHECKING:
    from resnet_mnist.analysis.summary import RunSummary


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
        found = client.search_registered_models(filter_string=f"name = {names.quote(name)}")
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
    if names.SELECTION_METRIC in version.tags:
        return float(version.tags[names.SELECTION_METRIC])
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
    client: MlflowClient,
    candidate: RunSummary,
    name: str,
    tags: dict[str, str],
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
                return Crowning(
                    str(current.version),
                    candidate.run_id,
                    False,
                    f"champion stays version {current.version}: it is this run already (dev {acc:.2%})",
                )
            held = champion_dev_accuracy(client, current, scorer)
            if held is not None and held > acc:
                return Crowning(
                    str(current.version),
                    current.run_id or "",
                    False,
                    f"champion stays version {current.version}: dev {held:.2%} > "
                    f"{acc:.2%} for run {candidate.run_id[:8]}",
                )
        run = client.get_run(candidate.run_id)
        source = run.data.tags.get(names.LOGGED_MODEL_URI, f"runs:/{candidate.run_id}/model")
        version = str(mlflow.register_model(source, name, tags=tags).version)
        client.set_registered_model_alias(name, CHAMPION, version)
    if current is None:
        why = "the first champion"
    elif held is None:
        why = f"version {current.version} has no full-dev score"
    else:
        why = f"dev {acc:.2%} ≥ {held:.2%} for version {current.version}"
    return Crowning(
        version,
        candidate.run_id,
        True,
        f"champion is now version {version}: {why} (run {candidate.run_id[:8]}, dev {acc:.2%})",
    )
