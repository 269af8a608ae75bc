"""The residual study: its grid, the statistics and verdict, and (slow tier) the whole
`resnet-mnist study` against a real store on its embedded Ray: nested runs, cell keys, nothing
trained twice, the report refused before the grid is complete. Ray clusters, node deaths and
stops are `test_cluster`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from resnet_mnist.analysis import stats as ST
from resnet_mnist.config.settings import ConfigError
from resnet_mnist.study import figures as F
from resnet_mnist.study import report as R
from resnet_mnist.study import results as C
from resnet_mnist.study import spec as S
from resnet_mnist.tracking.names import STUDY_EXPERIMENT
from tests.conftest import cli
from tests.study.conftest import ReferenceStudy, log_of, store_of

# -- the grid -----------------------------------------------------------------------------------


def test_study_files_load_and_list_every_cell() -> None:
    spec = S.load_study("cpu-grid")
    assert spec.preset == "study-cpu" and spec.depths == (8, 20, 56)
    # per (depth, variant): every rate at seed 0, then the other seeds at the chosen rate
    assert spec.cell_count() == 3 * 2 * (len(spec.lrs) + len(spec.seeds) - 1) == 30
    # tuned: every seed at the search's choice (the trials are the searches')
    assert S.load_study("cpu").cell_count() == 3 * 2 * 4 and S.load_study("cpu").tune is not None
    assert [g.name for g in spec.groups()][:2] == ["resnet56-plain", "resnet56-residual"]
    assert S.load_study("gpu").depths == (20, 32, 44, 56, 110)
    assert S.load_study("tiny", depths=[14], seeds=[3], lrs=[0.1]).cell_count() == 2
    assert S.load_study("cpu").key() == S.load_study("cpu").key()
    assert S.load_study("cpu").key() != S.load_study("cpu", seeds=[0, 1]).key()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"name": "nope"}, "unknown study 'nope'"),
        ({"name": "tiny", "depths": [19]}, "depth=19 is not a ResNet depth"),
        ({"name": "tiny", "seeds": [1, 1]}, "seeds repeats a value"),
        ({"name": "tiny", "lrs": [-1.0]}, "lr=-1.0 must be a finite number > 0"),
    ],
)
def test_bad_studies_are_refused_before_training(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        S.load_study(**kwargs)


def test_a_study_needs_matched_settings(tmp_path: Path) -> None:
    """The book's preset trains the variants with different rates and batches: refused."""
    path = tmp_path / "unmatched.yaml"
    path.write_text("preset: seed\ndepths: [18]\nseeds: [0]\nlrs: [0.01]\n")
    with pytest.raises(ConfigError, match="sets the variants differently"):
        S.load_study(str(path))
    path.write_text("preset: smoke\ndepths: [18]\nextra: 1\n")
    with pytest.raises(ConfigError, match="unknown: extra"):
        S.load_study(str(path))


def test_the_rate_is_chosen_on_dev_and_ties_go_to_the_smaller() -> None:
    assert S.choose_lr({0.02: 0.91, 0.05: 0.95}) == 0.05
    assert S.choose_lr({0.05: 0.95, 0.02: 0.95}) == 0.02


# -- statistics and verdict ---------------------------------------------------------------------


def test_intervals_match_scipy() -> None:
    values = [0.1, 0.4, 0.35, 0.2]
    ci = ST.t_interval(values)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(values), scale=stats.sem(values))
    assert (ci.low, ci.high) == pytest.approx((low, high))
    assert math.isnan(ST.t_interval([0.3]).low) and ST.t_interval([0.3]).n == 1
    a, b = [1.0, 1.2, 1.1], [0.5, 0.55, 0.45]
    welch = ST.welch_interval(a, b)
    res = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (welch.low, welch.high) == pytest.approx((res.low, res.high))


def _cell(depth: int, variant: str, seed: int, loss: float, dev: float, lr: float = 0.05) -> C.Cell:
    return C.Cell(
        f"{depth}{variant}{seed}{lr}", depth, variant, lr, seed, "", loss, dev, 10000, dev, 1000, 1.0
    )


def synthetic_grid() -> tuple[S.StudySpec, list[C.Cell]]:
    """Plain-56 clearly worse than residual-56; at 20 layers the two are within the noise."""
    spec = S.StudySpec("synthetic", "study-tiny", (20, 56), (0, 1, 2), (0.02, 0.05))
    cells = []
    for seed, jitter in zip((0, 1, 2), (0.0, 0.02, -0.02), strict=True):
        cells += [
            _cell(20, "plain", seed, 0.30 + jitter, 0.97),
            _cell(20, "residual", seed, 0.30 - jitter, 0.97 + jitter / 10),
            _cell(56, "plain", seed, 1.50 + jitter, 0.40),
            _cell(56, "residual", seed, 0.20 + jitter / 2, 0.98),
        ]
    # the rate search: seed 0 at the other rate, worse on dev
    cells += [_cell(d, v, 0, 2.0, 0.1, lr=0.02) for d in (20, 56) for v in S.VARIANTS]
    return spec, cells


def test_verdict_separates_a_real_gap_from_noise() -> None:
    spec, cells = synthetic_grid()
    results, search = C.analyse(spec, cells)
    assert [r.depth for r in results] == [20, 56] and len(search) == 8
    assert all(r.lr == {"plain": 0.05, "residual": 0.05} for r in results)
    at20, at56 = results
    assert not at20.loss_gap.excludes_zero()
    assert at56.loss_gap.excludes_zero() and at56.loss_gap.mean == pytest.approx(1.30, abs=0.02)
    text = R.verdict(results)
    assert "At 20 layers" in text and "within the seed-to-seed noise" in text
    assert "At 56 layers the plain network's final training loss is 1.3" in text
    assert "shortcuts make this network easier to train" in text
    assert "the degradation problem" in text
    assert C.missing_cells(spec, cells) == 0
    assert C.missing_cells(spec, [c for c in cells if c.seed != 2]) == 4
    rows = R.table_rows(results)
    assert [r[:3] for r in rows][:2] == [["20", "plain", "0.05"], ["20", "residual", "0.05"]]


def test_report_figures_are_written(tmp_path: Path) -> None:
    spec, cells = synthetic_grid()
    results, _ = C.analyse(spec, cells)
    for r in results:
        for c in (c for v in S.VARIANTS for c in r.cells[v]):
            c.steps, c.train_loss = list(range(20)), list(np.linspace(2.3, c.final_train_loss, 20))
            c.diagnostics = {
                "grad_norm/stem": 0.1,
                "grad_norm/stage1": 0.2,
                "grad_norm/head": 1.0,
                "init/grad_norm/stem": 0.5,
                "init/grad_norm/head": 2.0,
                "lesion/none": 0.97,
                "lesion/stage1.block0": 0.5,
                "lesion/stage1.block1": 0.9,
            }
    for path in (
        F.plot_fig6(results, tmp_path / "fig6.png"),
        F.plot_depth(results, tmp_path / "depth.png"),
        F.plot_diagnostics(results, tmp_path / "diag.png"),
    ):
        assert path is not None and path.stat().st_size > 10_000


# -- the whole study (slow tier) ----------------------------------------------------------------


def study_runs(tmp: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.get_experiment_by_name(STUDY_EXPERIMENT)
    return [] if exp is None else client.search_runs([exp.experiment_id], max_results=1000)


@pytest.mark.ray
@pytest.mark.slow
def test_study_end_to_end_then_nothing_to_train(reference_study: ReferenceStudy) -> None:
    """The shared reference study (`tests/study/conftest.py`), as a user's first study, then
    asked again."""
    early, folder = reference_study.early, reference_study.folder
    assert early.returncode == 1 and "6 of 6 cells have not finished" in early.stderr
    log = log_of(folder)
    assert "embedded local Ray: 1 node" in log and log.count(" trained on ") == 6
    runs = study_runs(folder)
    (parent,) = [r for r in runs if r.data.tags.get("run_type") == "study"]
    cells = [r for r in runs if r.data.tags.get("run_type") == "train"]
    assert len(cells) == 6 and all(r.info.status == "FINISHED" for r in cells)
    assert {r.data.tags["mlflow.parentRunId"] for r in cells} == {parent.info.run_id}
    assert {r.data.params["depth"] for r in cells} == {"8"}
    assert {r.data.tags["architecture"] for r in cells} == {"resnet8-plain", "resnet8-residual"}
    keys = {r.data.tags["study.cell"] for r in cells}
    assert len(keys) == 6 and "resnet8-plain/lr=0.02/seed=0" in keys
    assert {r.data.tags["study.attempt"] for r in cells} == {"1"}
    assert all(r.data.tags["study.nodes"] == r.data.tags["study.node"] for r in cells)
    # matched settings: both variants share batch size, schedule and epochs
    assert (
        len(
            {(r.data.params["batch_size"], r.data.params["schedule"], r.data.params["epochs"]) for r in cells}
        )
        == 1
    )
    assert all("grad_norm/stage1" in r.data.metrics and "lesion/none" in r.data.metrics for r in cells)
    client = MlflowClient(store_of(folder))
    parent = client.get_run(parent.info.run_id)
    assert parent.data.tags["study.status"] == "complete"
    assert "At 8 layers" in parent.data.tags["mlflow.note.content"]
    assert "final_train_loss/plain" in parent.data.metrics
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id, "study")}
    assert {
        "study/fig6_train_loss.png",
        "study/depth.png",
        "study/diagnostics.png",
        "study/study.md",
        "study/study.csv",
        "study/lr_search.md",
        "study/verdict.md",
    } <= artifacts
    assert (folder / "out" / "verdict.md").read_text().startswith("# Study study")

    again = cli(
        "study", "--study", str(folder / "study.yaml"), "--out", "out", cwd=folder,
        env={"MLFLOW_TRACKING_URI": store_of(folder)},
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(" reused on ") == 6 and " trained on " not in again.stdout
    assert len(study_runs(folder)) == len(runs)
