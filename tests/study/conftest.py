"""The test study, shared by the study's tests: its file (the tiny study with 64 steps per cell),
how a test starts it as a user would, what its store and report hold, and one uninterrupted run
of it on an embedded Ray of 2 slots, made once per session (the `ray` tests share one worker), as
the study's end-to-end test checks it and the reference every stopped or killed study must match.
"""

from __future__ import annotations

import csv
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from resnet_mnist.tracking.names import STUDY_EXPERIMENT
from tests.conftest import BIN, REPO, child_env, cli

CELLS = 6  # two rates per variant at seed 0, then seed 1 at each variant's chosen rate


def study_file(tmp: Path) -> Path:
    """The tiny study with 64 steps per cell (checkpoints every 8), in the test's folder."""
    preset = tmp / "study-test.yaml"
    preset.write_text((REPO / "mlproject" / "study-tiny.yaml").read_text().replace("epochs: 2", "epochs: 4"))
    assert "epochs: 4" in preset.read_text()
    path = tmp / "study.yaml"
    path.write_text(
        f"preset: {preset}\ndepths: [8]\nseeds: [0, 1]\nlrs: [0.02, 0.05]\nresources: {{cpus: 1}}\n"
    )
    return path


def store_of(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def cell_runs(folder: Path) -> list[Run]:
    client = MlflowClient(store_of(folder))
    exp = client.get_experiment_by_name(STUDY_EXPERIMENT)
    if exp is None:
        return []
    return [
        r
        for r in client.search_runs([exp.experiment_id], max_results=1000)
        if r.data.tags.get("run_type") == "train"
    ]


def numbers(folder: Path) -> dict[str, tuple]:
    """Each FINISHED cell's result, by cell key (exactly one run per key)."""
    finished = [r for r in cell_runs(folder) if r.info.status == "FINISHED"]
    keys = [r.data.tags["study.cell"] for r in finished]
    assert len(keys) == len(set(keys)) == CELLS, sorted(keys)
    return {
        r.data.tags["study.cell"]: (
            r.data.metrics["train_epoch_loss"],
            r.data.metrics["best_dev_accuracy"],
            r.data.metrics["test_accuracy"],
        )
        for r in finished
    }


def report_table(folder: Path) -> list[list[str]]:
    """The report's table without its timings and run ids."""
    with open(folder / "out" / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    return [[v for k, v in row.items() if k not in ("train time s", "run ids")] for row in rows]


def start_study(folder: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    """The study command as a user starts it in a terminal: its own process group."""
    log = open(folder / "study.log", "w")
    return subprocess.Popen(
        [str(BIN / "resnet-mnist"), "study", "--study", str(study_file(folder)), "--out", "out", *args],
        cwd=folder,
        env=child_env(env | {"MLFLOW_TRACKING_URI": store_of(folder)}),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def log_of(folder: Path) -> str:
    return (folder / "study.log").read_text()


@dataclass(frozen=True)
class ReferenceStudy:
    """The test study trained without interruption: its folder (store, `out/`, `study.log`) and
    what `study --report-only` said before any cell had trained."""

    folder: Path
    early: subprocess.CompletedProcess[str]


@pytest.fixture(scope="session")
def reference_study(tmp_path_factory: pytest.TempPathFactory) -> ReferenceStudy:
    """The test study trained without interruption on an embedded Ray (the default) of 2 slots,
    after `--report-only` was asked of its empty store. Read only."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    early = cli(
        "study", "--study", str(study_file(folder)), "--report-only", cwd=folder,
        env={"MLFLOW_TRACKING_URI": store_of(folder)},
    )  # fmt: skip
    proc = start_study(folder, {}, "--workers", "2")
    assert proc.wait(timeout=1200) == 0, log_of(folder)
    text = log_of(folder)
    assert "embedded local Ray: 1 node, 2 CPU slots" in text and text.count(" trained on ") == CELLS
    assert {r.data.tags["study.attempt"] for r in cell_runs(folder)} == {"1"}
    return ReferenceStudy(folder, early)
