"""The CLI and the MLflow Project, run as a user runs them: real subprocesses, a temp store."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist.core import data as D
from tests.conftest import BIN, REPO, cli, copy_store, mlflow_run_entry

pytestmark = pytest.mark.slow  # real processes


def runs_in(uri: str, experiment: str = "resnet18-mnist") -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def test_help_lists_commands(tmp_path: Path) -> None:
    out = cli("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("data", "summary", "train", "verify-torchvision"):
        assert command in out.stdout


def test_summary_and_verify(tmp_path: Path) -> None:
    out = cli("summary", cwd=tmp_path)
    assert out.returncode == 0 and "11,175,370" in out.stdout and "MACs" in out.stdout
    out = cli("verify-torchvision", "--size", "64", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "max |difference|" in out.stdout and "equivalent" in out.stdout


def test_verify_with_weights_file_and_bad_file(tmp_path: Path) -> None:
    import torch
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    assert cli("verify-torchvision", "--size", "64", "--weights", str(weights), cwd=tmp_path).returncode == 0
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    out = cli("verify-torchvision", "--weights", str(tmp_path / "bad.pth"), cwd=tmp_path)
    assert out.returncode == 1 and "cannot load torchvision weights" in out.stderr


@pytest.fixture
def data_copy(real_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "datacopy"
    shutil.copytree(D.raw_dir(real_root), D.raw_dir(root))
    return root


def test_data_fetch_twice_is_idempotent(data_copy: Path, tmp_path: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in D.raw_dir(data_copy).iterdir()}
    for _ in range(2):
        out = cli("data", "fetch", "--root", str(data_copy), cwd=tmp_path)
        assert out.returncode == 0 and "verified" in out.stdout
    after = {p.name: p.stat().st_mtime_ns for p in D.raw_dir(data_copy).iterdir()}
    assert before == after


def test_corrupted_file_is_refused_by_name(data_copy: Path, tmp_path: Path, empty_store: Path) -> None:
    path = D.raw_dir(data_copy) / "train-labels-idx1-ubyte"
    content = bytearray(path.read_bytes())
    content[100] ^= 0xFF
    path.write_bytes(bytes(content))
    uri = copy_store(empty_store, tmp_path)
    out = cli(
        "train", "--preset", "smoke", "--root", str(data_copy), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri}
    )
    assert out.returncode == 1
    assert "train-labels-idx1-ubyte" in out.stderr and "SHA-256 mismatch" in out.stderr
    assert runs_in(uri) == []


def test_train_smoke_through_cli(tmp_path: Path, empty_store: Path) -> None:
    uri = copy_store(empty_store, tmp_path)
    out = cli(
        "train",
        "--preset",
        "smoke",
        "--use-residual",
        "false",
        "--epochs",
        "1",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert out.returncode == 0, out.stderr
    assert "[Train] epoch: 0/1, step: 0/16, loss:" in out.stdout
    assert "[Evaluate] dev score:" in out.stdout
    (run,) = runs_in(uri)
    assert run.info.status == "FINISHED" and run.data.params["variant"] == "plain"
    assert f"runs:/{run.info.run_id}/model" in out.stdout
    assert (
        f"in the MLflow UI: http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/"
        f"{run.info.run_id}?workflowType=machine_learning"
    ) in out.stdout
    assert run.data.params["epochs"] == "1"


def flat(text: str) -> str:
    """Output as one line of words, without the frame rich draws around usage errors."""
    return " ".join(text.replace("│", " ").split())


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "0"], "lr=0.0 must be a finite number > 0"),
        (["--batch-size", "0"], "batch_size=0 must be >= 1"),
        (["--test-size", "20000"], "test_size=20000 must be in 1..10000"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--use-residual", "maybe"], "'maybe' is not true or false"),
    ],
)
def test_invalid_parameters_exit_nonzero_without_a_run(
    tmp_path: Path, empty_store: Path, args: list[str], message: str
) -> None:
    uri = copy_store(empty_store, tmp_path)
    out = cli("train", "--preset", "smoke", *args, cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 2
    assert message in flat(out.stderr + out.stdout)
    assert runs_in(uri) == []


def mlflow_run(
    tmp_path: Path, uri: str, *params: str, experiment: str = "resnet18-mnist"
) -> subprocess.CompletedProcess[str]:
    """`mlflow run` of this project in the local environment, as the README shows it."""
    return mlflow_run_entry(tmp_path, uri, "main", *params, experiment=experiment)


def test_mlflow_run_is_one_run_with_the_resolved_values(tmp_path: Path, empty_store: Path) -> None:
    uri = copy_store(empty_store, tmp_path)
    out = mlflow_run(
        tmp_path, uri, "use_residual=false", "preset=smoke", "lr=0.02", "epochs=2", "eval_batch_size=250"
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = runs_in(uri)
    assert run.info.status == "FINISHED" and run.data.tags["run_type"] == "train"
    assert "mlflow.parentRunId" not in run.data.tags
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.info.run_name == "resnet18-plain-seed0"
    params = run.data.params
    # -P values as MLflow logged them, and the preset's values the run actually used
    assert (params["use_residual"], params["lr"], params["epochs"]) == ("false", "0.02", "2")
    assert (params["batch_size"], params["eval_batch_size"], params["variant"]) == ("32", "250", "plain")
    client = MlflowClient(uri)
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == list(range(32))
    assert {"best_dev_accuracy", "test_accuracy", "param_count"} <= set(run.data.metrics)
    mlflow.set_tracking_uri(uri)
    assert mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model").metadata.signature


def test_mlflow_run_compare_makes_its_run_the_comparison(tmp_path: Path, smoke_compared: Path) -> None:
    uri = copy_store(smoke_compared, tmp_path)  # both trained and scored: the entry point is the point
    before = {r.info.run_id for r in runs_in(uri, "resnet18-mnist-comparisons")}
    out = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(REPO),
            "-e",
            "compare",
            "--env-manager",
            "local",
            "--experiment-name",
            "resnet18-mnist-comparisons",
            "-P",
            "preset=smoke",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env={k: v for k, v in os.environ.items() if k not in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID")}
        | {"MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}:{os.environ['PATH']}"},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (comparison,) = [r for r in runs_in(uri, "resnet18-mnist-comparisons") if r.info.run_id not in before]
    assert comparison.data.tags["run_type"] == "comparison"
    assert comparison.data.tags["mlflow.project.entryPoint"] == "compare"
    assert comparison.info.status == "FINISHED" and "diff_ci_low" in comparison.data.metrics
    trains = runs_in(uri)
    assert sorted(r.data.tags["variant"] for r in trains) == ["plain", "residual"]
    assert comparison.data.tags["compared_run_ids"] == ",".join(
        r.info.run_id for r in sorted(trains, key=lambda r: r.data.tags["variant"])
    )


@pytest.mark.parametrize(
    "param,message",
    [
        ("use_residual=maybe", "'maybe' is not true or false"),
        ("bacth_size=8", "No such option: --bacth-size"),
        ("epochs=0", "epochs=0 must be >= 1"),
    ],
)
def test_mlflow_run_refuses_bad_parameters_before_training(
    tmp_path: Path, empty_store: Path, param: str, message: str
) -> None:
    uri = copy_store(empty_store, tmp_path)
    out = mlflow_run(tmp_path, uri, "preset=smoke", param)
    assert out.returncode != 0
    assert message in flat(out.stderr + out.stdout)
    (run,) = runs_in(uri)
    assert run.info.status == "FAILED" and not run.data.metrics


def test_data_samples_writes_labelled_pngs(tmp_path: Path, mnist) -> None:
    out = cli("data", "samples", "--out", str(tmp_path / "d"), "--count", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "d").glob("*.png"))
    assert [f.name for f in files] == [f"test{i:05d}_label{mnist.test_labels[i]}.png" for i in range(3)]
    import numpy as np
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(files[1])), mnist.test_images[1])
