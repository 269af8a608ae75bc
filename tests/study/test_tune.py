"""Tuning: one trial exactly once (`study.trials`, in this process against a real sqlite store and
a real Optuna study in MLflow), and (slow tier, Ray) the whole `tune` through `mlflow run -e tune`,
and on a loopback Ray cluster a trial whose worker is killed, then the search continued.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
from collections.abc import Hashable
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.entities import Run
from mlflow.optuna.storage import MlflowStorage
from mlflow.tracking import MlflowClient

from resnet_mnist.config.search import load_space
from resnet_mnist.config.settings import build_config
from resnet_mnist.study import trials as TR
from resnet_mnist.study import tune as T
from resnet_mnist.study.spec import Resources
from resnet_mnist.tracking import names
from resnet_mnist.tracking.checkpoints import BEST
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.runner import ResumeError, resume
from tests.conftest import BIN, REPO, child_env, cli, copy_store, mlflow_run_entry
from tests.study.test_cells import dead_pid
from tests.study.test_cluster import LoopbackCluster, frozen, ray_env, wait_for

TUNE = str(REPO / "tests" / "presets" / "tune.yaml")


def tune_spec(trials: int = 3, pruner: str = "none") -> T.TuneSpec:
    base = build_config(TUNE, True)
    return T.TuneSpec(base, load_space("tiny").check_with(base), trials, TR.PrunerSpec(pruner))


class Recorded:
    """An engine that only records what the search submits: the test runs each trial itself."""

    def __init__(self) -> None:
        self.orders: list[TR.TrialOrder] = []

    def submit(self, order: TR.TrialOrder, resources: Resources) -> Hashable:
        self.orders.append(order)
        return len(self.orders) - 1


def trials_by_number(home: T.TuneHome) -> dict[int, optuna.trial.FrozenTrial]:
    """The study's trials as Optuna reads them from MLflow (its MLflow storage lists them newest
    first, not by number)."""
    study = optuna.load_study(study_name=home.study_name, storage=MlflowStorage(home.experiment_id))
    return {t.number: t for t in study.trials}


# -- one trial, exactly once (real training in this process, slow tier) --------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("own_threads")
def test_a_trial_is_its_training_run_pruned_complete_or_failed_and_never_trained_twice(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient()
    spec = tune_spec()
    home = T.open_tune(client, spec, "tune-test")
    assert T.open_tune(client, spec, "tune-test") == home  # found by name, not made twice
    engine = Recorded()
    search = T.Search(engine, client, home, spec, 1, lambda line: None)  # type: ignore[arg-type]

    # pruned at its first evaluation (a pruner that prunes everything): its run ends KILLED
    search.ask()
    first = engine.orders[0]
    with monkeypatch.context() as patch:
        patch.setattr(TR.PrunerSpec, "build", lambda self: optuna.pruners.ThresholdPruner(lower=2.0))
        pruned = TR.run_trial(first, "node-a")
    assert (pruned.state, pruned.how, pruned.number) == (TR.PRUNED, "trained", 0)
    run = client.get_run(first.run_id)
    assert run.info.status == "KILLED" and run.data.tags[names.STOPPED_EARLY_AT_STEP] == "4"
    assert run.data.tags[names.FAILURE_REASON].startswith("pruned at step 4 by the none pruner")
    assert run.data.tags[names.PARENT_RUN_ID] == home.run_id and run.data.tags[names.RUN_TYPE] == "train"
    assert run.info.run_name == "resnet8-residual-trial-0" and run.data.tags[names.TUNE_TRIAL] == "0"
    assert float(run.data.params["lr"]) == first.config.lr
    frozen_trial = trials_by_number(home)[0]
    assert frozen_trial.state == optuna.trial.TrialState.PRUNED
    assert frozen_trial.intermediate_values == {4: run.data.metrics["dev_accuracy"]}
    assert frozen_trial.value == pruned.value
    assert {f.path for f in client.list_artifacts(first.run_id, "checkpoints")} >= {BEST}
    with pytest.raises(ResumeError, match="trial 0 of a tune search"):  # only its search continues it
        resume(RunRequest.resuming(first.run_id))

    # complete: told its best dev accuracy before its run ends FINISHED, with a model
    search.ask()
    second = engine.orders[1]
    done = TR.run_trial(second, "node-b")
    run = client.get_run(second.run_id)
    assert (done.state, done.how, run.info.status) == (TR.COMPLETE, "trained", "FINISHED")
    study = optuna.load_study(study_name=home.study_name, storage=MlflowStorage(home.experiment_id))
    assert study.best_trial.number == 1 and study.best_value == run.data.metrics["best_dev_accuracy"]
    assert sorted(trials_by_number(home)[1].intermediate_values) == [4, 8, 12, 15]
    assert run.data.tags[names.LOGGED_MODEL_URI].startswith("models:/m-")
    again = TR.run_trial(second, "node-c")  # a retried task finds it ended: nothing trained
    assert (again.how, again.run_id, again.value) == ("reused", done.run_id, done.value)

    # died before its first checkpoint: ended FAILED with the reason, and spends no budget
    search.ask()
    third = engine.orders[2]
    pid, started = dead_pid()
    host = socket.gethostname()
    owner = {names.OWNER_PID: str(pid), names.OWNER_HOST: host, names.OWNER_STARTED: f"{started:.3f}"}
    for key, value in owner.items():
        client.set_tag(third.run_id, key, value)
    failed = TR.run_trial(third, "node-d")
    run = client.get_run(third.run_id)
    assert (failed.state, run.info.status) == (TR.FAILED, "FAILED") and math.isnan(failed.value)
    assert f"its process (pid {pid} on {socket.gethostname()}" in run.data.tags[names.FAILURE_REASON]
    assert trials_by_number(home)[2].state == optuna.trial.TrialState.FAIL
    assert [T.counts(r) for r in T.trial_runs(client, home)] == [True, True, False]


# -- the command (slow tier, Ray) -----------------------------------------------------------------


def trials_in(uri: str, experiment: str) -> tuple[Run, list[Run]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get(names.RUN_TYPE) == names.TUNE]
    return parent, [r for r in runs if r.data.tags.get(names.PARENT_RUN_ID) == parent.info.run_id]


@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_run_tune_makes_its_run_the_tune_run_and_reports_the_best(
    tmp_path: Path, empty_store: Path
) -> None:
    uri = copy_store(empty_store, tmp_path)
    done = mlflow_run_entry(
        tmp_path, uri, "tune", f"preset={TUNE}", "space=tiny", "trials=2", "workers=2", "pruner=none",
        f"out={tmp_path / 'out'}", experiment="my-tune",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    parent, trials = trials_in(uri, "my-tune")
    assert parent.data.tags["mlflow.project.entryPoint"] == "tune"  # the project's run is the tune run
    assert parent.data.tags[names.OPTUNA_DIRECTION] == "MAXIMIZE"
    assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
    assert sorted(r.data.tags[names.TUNE_TRIAL] for r in trials) == ["0", "1"]
    best = max(trials, key=lambda r: r.data.metrics["best_dev_accuracy"])
    tags = parent.data.tags
    assert tags[names.TUNE_BEST_RUN] == best.info.run_id and tags[names.TUNE_STATUS] == "complete"
    assert parent.data.metrics["best_dev_accuracy"] == best.data.metrics["best_dev_accuracy"]
    artifacts = {f.path for f in MlflowClient(uri).list_artifacts(parent.info.run_id, "tune")}
    assert {"tune/trials.csv", "tune/trials.md", "tune/best_so_far.png", "tune/best.yaml"} <= artifacts
    preset = tmp_path / "out" / "best.yaml"
    chosen = build_config(str(preset), True)
    params = best.data.params
    assert chosen.lr == float(params["lr"]) and chosen.warmup_steps == int(params["warmup_steps"])
    assert yaml.safe_load(preset.read_text())["depth"] == 8


def trial_on(folder: Path, pids: set[int]) -> Run | None:
    """A trial RUNNING with a checkpoint in a worker among `pids`."""
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    exp = client.get_experiment_by_name(names.TUNE_EXPERIMENT)
    if exp is None:
        return None
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'RUNNING'"):
        tags = run.data.tags
        if names.RESUME_STEP in tags and int(tags.get(names.OWNER_PID, "0")) in pids:
            return run
    return None


@pytest.mark.ray
@pytest.mark.slow
def test_a_trial_whose_worker_is_killed_continues_in_its_run_and_a_larger_budget_continues_the_search(
    tmp_path: Path,
) -> None:
    """SIGKILL to the worker process training a trial on the cluster's second node: Ray runs the
    task again, which continues the trial from its checkpoint in the same run. Then the same
    search asked again on the cluster with a larger budget."""
    env = ray_env()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with LoopbackCluster(tmp_path, env) as cluster:
        log = open(tmp_path / "tune.log", "w")
        proc = subprocess.Popen(
            [
                str(BIN / "resnet-mnist"), "tune", "--preset", TUNE, "--space", "tiny", "--trials", "2",
                "--pruner", "none", "--epochs", "8", "--address", cluster.address,
            ],
            cwd=tmp_path, env=child_env(env | {"MLFLOW_TRACKING_URI": uri}), stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        second = cluster.nodes[1]
        on_second = lambda: {p.pid for p in cluster.processes(second)}  # noqa: E731
        caught = wait_for(
            "a trial training on the second node",
            lambda: trial_on(tmp_path, on_second()),
            proc,
            tmp_path / "tune.log",
        )
        assert isinstance(caught, Run)
        worker = int(caught.data.tags[names.OWNER_PID])
        with frozen(worker):  # still mid-training when the kill lands
            os.kill(worker, signal.SIGKILL)
        assert proc.wait(timeout=1200) == 0, (tmp_path / "tune.log").read_text()[-3000:]
        parent, trials = trials_in(uri, names.TUNE_EXPERIMENT)
        assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
        (killed,) = [r for r in trials if r.info.run_id == caught.info.run_id]
        assert int(killed.data.tags[names.RESUMED_FROM_STEP]) >= int(caught.data.tags[names.RESUME_STEP])
        assert killed.data.tags[names.TAKEN_OVER_FROM].startswith(f"{worker}@")
        assert int(killed.data.tags[names.OWNER_PID]) != worker  # another worker process finished it
        assert parent.data.tags[names.TUNE_STATUS] == "complete"

        # asked again with a larger budget, the same search goes on: one more trial, none twice
        again = cli(
            "tune", "--preset", TUNE, "--space", "tiny", "--trials", "3", "--pruner", "none", "--epochs", "8",
            "--address", cluster.address, cwd=tmp_path, env=env | {"MLFLOW_TRACKING_URI": uri},
        )  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        assert again.stdout.count(" complete, trained on ") == 1
    after, trials = trials_in(uri, names.TUNE_EXPERIMENT)
    assert after.info.run_id == parent.info.run_id and len(trials) == 3
    assert {r.info.status for r in trials} == {"FINISHED"}
    assert sorted(r.data.tags[names.TUNE_TRIAL] for r in trials) == ["0", "1", "2"]
    drawn = {(r.data.params["lr"], r.data.params["warmup_steps"]) for r in trials}
    assert len(drawn) == 3  # a continued search draws no settings again
    assert after.data.metrics["trials_spent"] == 3 and after.data.tags[names.TUNE_TRIALS] == "3"


@pytest.mark.usefixtures("store")
def test_settings_the_base_refuses_end_their_trial_failed_without_spending_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = MlflowClient()
    spec = tune_spec()
    home = T.open_tune(client, spec, "tune-test")
    engine = Recorded()
    search = T.Search(engine, client, home, spec, 1, lambda line: None)  # type: ignore[arg-type]
    monkeypatch.setattr(T, "suggest", lambda trial, space: {"lr": 0.01, "warmup_steps": 1000})
    search.ask()
    assert engine.orders == [] and search.broken == 1
    (run,) = T.trial_runs(client, home)
    assert run.info.status == "FAILED" and not T.counts(run)
    assert run.data.tags[names.FAILURE_REASON].startswith(
        "settings refused: warmup_steps=1000 must be in 0.."
    )
    assert trials_by_number(home)[0].state == optuna.trial.TrialState.FAIL
