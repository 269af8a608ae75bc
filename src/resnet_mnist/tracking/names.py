"""Every name the project's records live under, once (as MLflow's own `mlflow_tags.py` keeps its
tag keys): experiments, the registered model, its alias and URI, tag keys, run types, and the
search strings built from them."""

from __future__ import annotations

from collections.abc import Mapping

#: Training runs (`train`, `compare --train-missing`, `mlflow run .`).
DEFAULT_EXPERIMENT = "resnet18-mnist"
#: A comparison run lives beside its training runs, in `<their experiment><COMPARISONS>`.
COMPARISONS = "-comparisons"
#: The residual study's cells and study runs.
STUDY_EXPERIMENT = "resnet-mnist-study"
#: The registered model and the alias that `compare` moves to a model at least as good.
MODEL_NAME = "resnet18-mnist"
CHAMPION = "champion"
CHAMPION_URI = f"models:/{MODEL_NAME}@{CHAMPION}"

#: MLflow's own tag keys the project sets or searches by.
PARENT_RUN_ID = "mlflow.parentRunId"
NOTE = "mlflow.note.content"
EXPERIMENT_KIND = "mlflow.experimentKind"
GIT_COMMIT = "mlflow.source.git.commit"

#: What a run is: the value of its `run_type` tag.
RUN_TYPE = "run_type"
TRAIN = "train"
COMPARISON = "comparison"
SEED_GROUP = "seed_group"
STUDY = "study"

#: What a training run trained (searched and grouped by).
VARIANT = "variant"
DEPTH = "depth"
ARCHITECTURE = "architecture"
PRESET = "preset"
SEEDS = "seeds"
#: Where and with what it ran: the device (`cuda:0`, `cpu`; placement, not a setting) and versions.
DEVICE = "device"
TORCH_VERSION = "torch_version"
MLFLOW_VERSION = "mlflow_version"

#: Who owns a RUNNING run (`tracking.ownership.owner_alive` reads them) and how it was continued.
OWNER_HOST = "owner.host"
OWNER_PID = "owner.pid"
OWNER_STARTED = "owner.started"
OWNER_HEARTBEAT = "owner.heartbeat"
RESUME_STEP = "resume_step"
RESUMED_FROM_STEP = "resumed_from_step"
TAKEN_OVER_FROM = "taken_over_from"
FAILURE_REASON = "failure_reason"
ERROR = "error"
STOPPED_AT_STEP = "stopped_at_step"
FAILED_AT_STEP = "failed_at_step"
STOPPED_EARLY_AT_STEP = "stopped_early_at_step"
OFFLINE_REPLAYED = "offline.replayed"
LOGGED_MODEL_URI = "logged_model_uri"
#: the LoggedModel's param: the temperature its probabilities are divided by (core.calibration)
TEMPERATURE = "temperature"

#: A comparison run's keys (its verdict is its note), and those it gives the champion's version.
COMPARED_RUN_IDS = "compared_run_ids"
DEV_WINNER = "dev_winner"
STATISTIC = "statistic"
SELECTED_BY = "selected_by"
SELECTION_METRIC = "dev_accuracy_full"
SETTINGS_MISMATCH = "settings_mismatch"
SET_ASIDE_RUN_IDS = "set_aside_run_ids"
CHAMPION_VERSION = "champion_version"
CHAMPION_RUN = "champion_run"
CHAMPION_MOVED = "champion_moved"
CHAMPION_NOTE = "champion_note"
COMPARED_RUNS = "compared_runs"
COMPARISON_RUN = "comparison_run"

#: The study run's keys (its cells are training runs under it).
STUDY_KEY = "study.key"
STUDY_STATUS = "study.status"
STUDY_RUN = "study.run"
STUDY_LR = "study.lr."
STUDY_DEPTHS = "study.depths"
STUDY_SEEDS = "study.seeds"
STUDY_LRS = "study.lrs"
STUDY_CELLS = "study.cells"
#: A tuned study's budget in words (in place of `study.lrs`).
STUDY_TUNE = "study.tune"
#: A cell's keys: its stable name in the grid, which phase chose it, which attempt at it this run
#: is, the Ray node that trained it, and every node that tried, in order (`node:outcome`).
STUDY_CELL = "study.cell"
STUDY_PHASE = "study.phase"
STUDY_ATTEMPT = "study.attempt"
STUDY_NODE = "study.node"
STUDY_NODES = "study.nodes"
#: A cell's study, by name (`study` tag; the study run's own key is STUDY_KEY).
STUDY_NAME = "study"
#: A tuned study's search: the (depth, variant) group its tune run chooses settings for.
STUDY_GROUP = "study.group"
#: On a tuned study's run: the settings each group's search chose (`study.tuned.resnet56-plain`).
STUDY_TUNED = "study.tuned."

#: Tuning: the experiment of tune runs and their trials, a tune run's type and keys, and a trial's
#: number and the node that trained it.
TUNE_EXPERIMENT = "resnet-mnist-tune"
TUNE = "tune"
TUNE_KEY = "tune.key"
TUNE_STATUS = "tune.status"
TUNE_RUN = "tune.run"
TUNE_SPACE = "tune.space"
TUNE_TRIALS = "tune.trials"
TUNE_PRUNER = "tune.pruner"
TUNE_SAMPLER = "tune.sampler"
TUNE_BEST_TRIAL = "tune.best_trial"
TUNE_BEST_RUN = "tune.best_run"
#: The best trial's searched settings as JSON (what `compare --tuned` trains with).
TUNE_BEST_SETTINGS = "tune.best_settings"
#: On a run `compare --tuned` trained: the tune run whose settings it used; on its comparison run,
#: that the variants were compared at their tuned settings.
TUNED_FROM = "tuned_from"
TUNED = "tuned"
TUNE_TRIAL = "tune.trial"
TUNE_NODE = "tune.node"
#: What Optuna's MLflow storage reads on a study run (its direction) and, on a trial's run, as
#: its value and intermediate values: never logged by a training.
OPTUNA_DIRECTION = "optuna.study_direction"
OPTUNA_NUMBER = "numbers"
OPTUNA_VALUE = "value"


def quote(value: str) -> str:
    """A string literal in MLflow's search syntax."""
    return "'" + value.replace("'", "\\'") + "'"


def runs_where(run_type: str, tags: Mapping[str, str] | None = None, *, finished: bool = False) -> str:
    """The search string for runs of one type with these tags (dotted keys backquoted), FINISHED
    only when asked."""
    terms = [f"tags.{RUN_TYPE} = {quote(run_type)}"]
    for key, value in (tags or {}).items():
        terms.append(f"tags.`{key}` = {quote(value)}" if "." in key else f"tags.{key} = {quote(value)}")
    if finished:
        terms.append("attributes.status = 'FINISHED'")
    return " and ".join(terms)
