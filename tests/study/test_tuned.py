"""A tuned study (`study.tuned`): every group's search with the same budget on the selection seed,
then each group's scored seeds at its search's choice; in this process against a real sqlite
store and real Optuna studies in MLflow, with an engine that ends each trial itself (its value a
function of the rate) and records the cells, and (slow tier, Ray) the whole tiny tuned study
through the CLI, reported."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Hashable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.config.space import ConfigError
from resnet_mnist.study import execution as E
from resnet_mnist.study import spec as S
from resnet_mnist.study.cells import CellOrder, CellOutcome
from resnet_mnist.study.trials import COMPLETE, TrialOrder, TrialOutcome
from resnet_mnist.study.tuned import TunedGrid, group_searches, tuned_settings
from resnet_mnist.tracking import names
from tests.conftest import TunedStudy


def dev_of(order: TrialOrder) -> float:
    """Plain networks prefer a large rate, residual ones a small one."""
    lr = order.config.lr
    return 0.9 + (math.log(lr) if not order.config.use_residual else -math.log(lr)) / 100


class Ending:
    """Runs each trial when asked to wait: logs the trial's settings and value on its run and
    ends it FINISHED, as a trained trial would; records the cells."""

    def __init__(self) -> None:
        self.orders: list[CellOrder | TrialOrder] = []

    def submit(self, order: CellOrder | TrialOrder, resources: S.Resources) -> Hashable:
        self.orders.append(order)
        return len(self.orders) - 1

    def wait(self, handles: list[Hashable], timeout_s: float) -> list[Hashable]:
        return sorted(handles)[:1]  # type: ignore[type-var]

    def result(self, handle: Hashable) -> CellOutcome | TrialOutcome:
        order = self.orders[int(handle)]  # type: ignore[call-overload]
        if isinstance(order, CellOrder):
            return CellOutcome(order.key, f"cell{handle}", "trained", 1, "here", 0.9, 1.0)
        client = MlflowClient()
        for key, value in order.config.params().items():
            client.log_param(order.run_id, key, value)
        client.set_tag(order.run_id, names.TUNE_TRIAL, str(order.number))
        client.log_metric(order.run_id, names.OPTUNA_VALUE, dev_of(order))
        client.set_terminated(order.run_id, "FINISHED")
        return TrialOutcome(order.number, order.run_id, COMPLETE, "trained", dev_of(order), "here")

    def cancel(self, handles: list[Hashable]) -> None:
        raise AssertionError("not stopped")


def test_each_group_is_searched_with_the_same_budget_then_its_seeds_trained(store: str) -> None:
    spec = S.load_study("tiny-tuned", depths=[8, 14], seeds=[0, 1, 2])
    client = MlflowClient()
    home = E.open_study(client, spec, "study-test")
    engine = Ending()
    logged: list[str] = []
    TunedGrid(engine, client, home, spec, 2, logged.append).run(threading.Event())
    trials = [o for o in engine.orders if isinstance(o, TrialOrder)]
    cells = [o for o in engine.orders if isinstance(o, CellOrder)]
    assert len(trials) == 4 * 2 and len(cells) == spec.cell_count() == 4 * 3
    # every search has the same budget, on the selection seed, with the trials' own settings
    by_group: dict[str, list[TrialOrder]] = {}
    for order in trials:
        by_group.setdefault(order.config.architecture, []).append(order)
    assert {g: len(o) for g, o in by_group.items()} == {g.name: 2 for g in spec.groups()}
    assert {(o.config.seed, o.config.eval_steps, o.config.diagnostics) for o in trials} == {(100, 8, False)}
    # the deepest group's trials are asked first, and the searches take turns
    assert [o.config.architecture for o in trials[:4]] == [g.name for g in spec.groups()]
    # each group's seeds at its best trial's settings; no scored cell uses the selection seed
    tuned = json.loads(client.get_run(home.run_id).data.tags[f"{names.STUDY_TUNED}resnet8-plain"])
    best = max(by_group["resnet8-plain"], key=dev_of)
    assert tuned == {"lr": best.config.lr, "warmup_steps": best.config.warmup_steps}
    plain8 = [c for c in cells if c.key.startswith("resnet8-plain/")]
    assert [c.config.seed for c in plain8] == [0, 1, 2]
    assert {(c.config.lr, c.config.warmup_steps, c.phase) for c in plain8} == {
        (best.config.lr, best.config.warmup_steps, E.TUNED)
    }
    assert {c.config.eval_steps for c in cells} == {0} and all(c.config.diagnostics for c in cells)
    assert plain8[0].key == S.cell_key("resnet8-plain", tuned, 0)
    # the tune runs nest under the study run, one per group
    searches = group_searches(client, spec, home.experiment_id)
    assert tuned_settings(searches)["resnet8-plain"] == tuned
    for search in searches:
        assert search.home is not None
        tags = client.get_run(search.home.run_id).data.tags
        assert (tags[names.PARENT_RUN_ID], tags[names.STUDY_GROUP]) == (home.run_id, search.group.name)
    assert any("resnet8-plain: trial" in line and "chosen on dev" in line for line in logged)
    # asked again: no new trial, the same cells (which a task finds finished)
    again = Ending()
    TunedGrid(again, client, home, spec, 2, logged.append).run(threading.Event())
    assert all(isinstance(o, CellOrder) for o in again.orders)
    assert sorted(o.key for o in again.orders) == sorted(c.key for c in cells)


class StoppedAtOnce(Ending):
    """Ctrl-C as the first trials were submitted, before any started: the first wait sets the
    stop; every task then ends at the cancel without having run."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self.stop, self.cancelled = stop, False

    def wait(self, handles: list[Hashable], timeout_s: float) -> list[Hashable]:
        self.stop.set()
        return handles if self.cancelled else []

    def cancel(self, handles: list[Hashable]) -> None:
        self.cancelled = True


def test_a_stop_before_the_trials_start_leaves_no_run_running_and_the_rerun_trains_them(
    store: str,
) -> None:
    spec = S.load_study("tiny-tuned")
    client = MlflowClient()
    home = E.open_study(client, spec, "study-test")
    stop = threading.Event()
    engine = StoppedAtOnce(stop)
    with pytest.raises(KeyboardInterrupt):
        TunedGrid(engine, client, home, spec, 2, lambda line: None).run(stop)
    asked = [o for o in engine.orders if isinstance(o, TrialOrder)]
    assert len(asked) == 2  # one per group: the slots
    for order in asked:
        run = client.get_run(order.run_id)
        assert run.info.status == "KILLED"
        assert run.data.tags[names.FAILURE_REASON] == "stopped before its training started"
    # the rerun trains those two trials in their runs, then asks for the rest of the budget
    again = Ending()
    TunedGrid(again, client, home, spec, 2, lambda line: None).run(threading.Event())
    trials = [o for o in again.orders if isinstance(o, TrialOrder)]
    assert [o.run_id for o in trials[:2]] == [o.run_id for o in asked] and len(trials) == 4
    assert {client.get_run(o.run_id).info.status for o in trials} == {"FINISHED"}


def test_a_tune_section_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    for tune, message in (
        ("{trials: 0}", "tune.trials must be a whole number >= 1"),
        ("{space: tiny}", "trials required"),
        ("{trials: 2, budget: 1}", "tune takes"),
        ("{trials: 2, pruner: hyperband}", "tune.pruner must be one of"),
        ("{trials: 2, seed: 1}", "tune.seed 1 is also a scored seed"),
        ("{trials: 2, settings: {seed: 3}}", "not depth, seed"),
        ("{trials: 2, settings: {eval_every: 3}}", "tune.settings.eval_every is not a setting"),
        ("{trials: 2, settings: {eval_steps: 1.5}}", "eval_steps must be of type int"),
        ("{trials: 2, space: tiny, settings: {lr: 0.1}}", "fixes what the space searches: lr"),
        ("{trials: 2, space: nowhere}", "unknown search space 'nowhere'"),
    ):
        path.write_text(f"preset: study-tiny\ndepths: [8]\nseeds: [0, 1]\ntune: {tune}\n")
        with pytest.raises(ConfigError, match=message):
            S.load_study(str(path))
    path.write_text("preset: study-tiny\ndepths: [8]\nlrs: [0.1]\ntune: {trials: 2, space: tiny}\n")
    with pytest.raises(ConfigError, match="takes no learning-rate grid"):
        S.load_study(str(path))
    with pytest.raises(ConfigError, match="takes no learning-rate grid"):
        S.load_study("tiny-tuned", lrs=[0.1])
    # a tuned study is another grid than the same study's rate grid
    assert S.load_study("cpu").key() != S.load_study("cpu-grid").key()
    assert S.load_study("cpu").cell_count() == 6 * 4 and S.load_study("cpu-grid").cell_count() == 30


@pytest.mark.ray
@pytest.mark.slow
def test_a_tiny_tuned_study_end_to_end(tuned_study: TunedStudy, tmp_path: Path) -> None:
    """`mlflow run -e study` of the tiny tuned study on an embedded Ray (the session's
    `tuned_study`): the project's run is the study run, both variants searched, their seeds
    trained at the chosen settings, and the report says so."""
    log = tuned_study.printed
    assert len(re.findall(r"^resnet8-\w+: trial \d chosen on dev", log, re.MULTILINE)) == 2
    assert "tuned first: 2 trials per (depth, variant)" in log
    assert "the searches: http://127.0.0.1:5000/#/experiments/" in log
    client = MlflowClient(tuned_study.uri)
    exp = client.get_experiment_by_name(names.STUDY_EXPERIMENT)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (study,) = [r for r in runs if r.data.tags.get(names.RUN_TYPE) == names.STUDY]
    assert study.data.tags["mlflow.project.entryPoint"] == "study"
    tunes = [r for r in runs if r.data.tags.get(names.RUN_TYPE) == names.TUNE]
    assert len(tunes) == 2 and all(t.data.tags[names.PARENT_RUN_ID] == study.info.run_id for t in tunes)
    trials = [r for r in runs if r.data.tags.get(names.PARENT_RUN_ID) in {t.info.run_id for t in tunes}]
    assert len(trials) == 4 and {r.data.params["seed"] for r in trials} == {"100"}
    assert all(r.data.params["diagnostics"] == "False" for r in trials)
    cells = [
        r
        for r in runs
        if r.data.tags.get(names.PARENT_RUN_ID) == study.info.run_id
        and r.data.tags.get(names.RUN_TYPE) == names.TRAIN
    ]
    assert len(cells) == 4 and {r.data.params["seed"] for r in cells} == {"0", "1"}
    assert all(r.info.status == "FINISHED" and r.data.tags[names.STUDY_PHASE] == "tuned" for r in cells)
    # each group's cells trained at the settings its search chose (tagged on the study run)
    for cell in cells:
        chosen = json.loads(study.data.tags[f"{names.STUDY_TUNED}{cell.data.tags['architecture']}"])
        assert {k: cell.data.params[k] for k in chosen} == {k: str(v) for k, v in chosen.items()}
    note = study.data.tags[names.NOTE]
    assert note.startswith("Every (depth, variant) group was tuned with the same budget: 2 trials")
    assert "Settings each search chose on dev: plain lr" in note
    assert study.data.tags[names.STUDY_STATUS] == "complete"
    artifacts = {f.path for f in client.list_artifacts(study.info.run_id, "study")}
    assert {"study/tuning.png", "study/tuning.md", "study/verdict.md"} <= artifacts
    assert "study/lr_search.md" not in artifacts
    table = Path(client.download_artifacts(study.info.run_id, "study/tuning.md", str(tmp_path))).read_text()
    assert "resnet8-plain" in table and "resnet8-residual" in table
