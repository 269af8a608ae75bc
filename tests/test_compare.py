"""Compare: run selection, statistics, outputs read back from MLflow, the champion alias."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from resnet_mnist import compare as C
from resnet_mnist.config import build_config
from resnet_mnist.history import History
from resnet_mnist.runner import train
from tests.conftest import REAL_ROOT

EXP = "resnet18-mnist"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One smoke run of each variant in a temporary store."""
    tmp = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RESNET_MNIST_DATA", str(REAL_ROOT))
        mlflow.set_tracking_uri(uri)
        ids = {}
        for variant in C.VARIANTS:
            config = build_config("smoke", variant == "residual")
            ids[variant] = train(config, EXP).run_id
        yield tmp, uri, ids


@pytest.fixture
def client(trained, monkeypatch):
    tmp, uri, _ = trained
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


def test_default_selection_is_latest_run_per_variant(trained, client) -> None:
    _, _, ids = trained
    runs = C.select_runs(client, EXP, "smoke")
    assert [r.info.run_id for r in runs] == [ids["plain"], ids["residual"]]
    assert C.select_runs(client, EXP, "seed") == []
    only = C.select_runs(client, EXP, where="tags.variant = 'residual'")
    assert [r.info.run_id for r in only] == [ids["residual"]]


def test_existing_runs_with_same_params_are_reused(trained, client) -> None:
    _, _, ids = trained
    exp_id = client.get_experiment_by_name(EXP).experiment_id

    def must_not_train(config, parent):
        raise AssertionError(f"retrained {config.variant}")

    got = C.ensure_runs(client, exp_id, "smoke", None, must_not_train)
    assert got == [ids["plain"], ids["residual"]]
    calls = []
    C.ensure_runs(client, exp_id, "smoke", None, lambda c, p: calls.append(c.epochs) or "x",
                  overrides={"epochs": 2})
    assert calls == [2, 2]


def test_compare_outputs_match_mlflow_and_register_dev_winner(trained, client, tmp_path) -> None:
    _, _, ids = trained
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    runs = C.select_runs(client, EXP, "smoke")
    result = C.compare(client, runs, tmp_path / "out", exp_id, "digits")

    for name in ("comparison.png", "comparison.pdf", "comparison.md", "comparison.csv",
                 "verdict.txt"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    with open(tmp_path / "out" / "comparison.csv") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    for variant, run_id in ids.items():
        run = client.get_run(run_id)
        m = run.data.metrics
        assert rows[variant]["best dev acc"] == f"{m['best_dev_accuracy']:.4f}"
        assert rows[variant]["test acc (book)"] == f"{m['test_accuracy']:.4f}"
        assert rows[variant]["test acc (10k)"] == f"{m['test_accuracy_full']:.4f}"
        assert 0.5 < m["test_accuracy_full"] <= 1.0
        assert rows[variant]["run id"] == run_id[:8]

    comparison = client.get_run(result.run_id)
    assert comparison.data.tags["run_type"] == "comparison"
    assert comparison.data.tags["compared_run_ids"] == f"{ids['plain']},{ids['residual']}"
    assert "comparison/comparison.png" in {
        a.path for a in client.list_artifacts(result.run_id, "comparison")}
    assert comparison.data.tags["mlflow.note.content"] == result.verdict

    # every compared run carries its full-test evaluation, also on its LoggedModel
    for run_id in ids.values():
        run = client.get_run(run_id)
        assert {"evaluation/confusion_matrix.json", "evaluation/confusion_matrix.png",
                "evaluation/mistakes.png"} <= {
            a.path for a in client.list_artifacts(run_id, "evaluation")}
        confusion = json.loads(mlflow.artifacts.load_text(
            f"runs:/{run_id}/evaluation/confusion_matrix.json"))["matrix"]
        assert np.trace(confusion) / np.sum(confusion) == pytest.approx(
            run.data.metrics["test_accuracy_full"])
        assert np.sum(confusion) == 10_000
        assert {f"test_full/{k}_digit{d}" for k in ("precision", "recall", "f1")
                for d in range(10)} <= set(run.data.metrics)
        model = mlflow.get_logged_model(run.outputs.model_outputs[0].model_id)
        full = [m for m in model.metrics if m.key == "test_accuracy_full"]
        assert [(m.value, m.dataset_name) for m in full] == [
            (run.data.metrics["test_accuracy_full"], "mnist-test")]

    # the comparison run holds each variant's mean curve and band as step metrics
    curve = client.get_metric_history(result.run_id, "train_loss/plain_mean")
    plain_loss = client.get_metric_history(ids["plain"], "train_loss")
    assert [m.step for m in curve] == [m.step for m in plain_loss]
    assert [m.value for m in curve] == pytest.approx([m.value for m in plain_loss])
    assert {"dev_accuracy/residual_mean", "dev_accuracy/residual_min",
            "dev_accuracy/residual_max"} <= set(comparison.data.metrics)

    dev = {v: client.get_run(i).data.metrics["best_dev_accuracy"] for v, i in ids.items()}
    winner = max(C.VARIANTS, key=lambda v: (dev[v], v == "residual"))
    champion = client.get_model_version_by_alias("digits", "champion")
    assert champion.run_id == ids[winner] and champion.tags["variant"] == winner
    # the registered version is the LoggedModel (which lists the version) and carries its scores
    model_id = client.get_run(ids[winner]).outputs.model_outputs[0].model_id
    assert champion.source == f"models:/{model_id}"
    versions = json.loads(mlflow.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert {"name": "digits", "version": champion.version} in versions
    assert champion.tags["best_dev_accuracy"] == f"{dev[winner]:.4f}"
    assert result.champion_uri == "models:/digits@champion"

    again = C.compare(client, runs, tmp_path / "out2", exp_id, "digits")
    assert again.champion_version == "2"
    assert str(client.get_model_version_by_alias("digits", "champion").version) == "2"
    assert client.get_model_version("digits", "1").run_id == ids[winner]


def test_champion_loads_by_alias(trained, client, tmp_path) -> None:
    from resnet_mnist import data as D

    exp_id = client.get_experiment_by_name(EXP).experiment_id
    C.compare(client, C.select_runs(client, EXP, "smoke"), tmp_path, exp_id, "byalias")
    model = mlflow.pyfunc.load_model("models:/byalias@champion")
    mnist = D.load(REAL_ROOT)
    probs = model.predict(mnist.test_images[:100].copy())
    assert (probs.argmax(1) == mnist.test_labels[:100]).mean() > 0.5


def test_only_one_variant_is_a_clear_error(trained, client, tmp_path) -> None:
    _, _, ids = trained
    with pytest.raises(C.CompareError, match="found only: residual"):
        C.compare(client, [client.get_run(ids["residual"])], tmp_path,
                  client.get_experiment_by_name(EXP).experiment_id, None)


def test_missing_experiment_is_a_clear_error(client) -> None:
    with pytest.raises(C.CompareError, match="does not exist"):
        C.select_runs(client, "no-such-experiment", "seed")


def summary(variant: str, seed: int, acc: float, dev: float = 0.9) -> C.RunSummary:
    return C.RunSummary(f"{variant}{seed}", variant, seed, dev, acc, 0.1, acc, 0.1, 1, 1, 1.0,
                        History())


def test_paired_statistics_and_verdicts() -> None:
    from scipy import stats

    plain = [0.970, 0.975, 0.972, 0.968, 0.971]
    residual = [0.980, 0.984, 0.979, 0.981, 0.983]
    runs = [summary("plain", i, a, 0.95) for i, a in enumerate(plain)]
    runs += [summary("residual", i, a, 0.97) for i, a in enumerate(residual)]
    s = C.statistics(runs)
    d = np.array(residual) - np.array(plain)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert s.diff == pytest.approx(d.mean())
    assert s.ci == pytest.approx((low, high))
    assert s.method == "paired t over 5 seeds" and s.dev_winner == "residual"
    assert "larger than the noise: residual wins" in C.verdict(s)

    noisy = [summary("plain", i, a) for i, a in enumerate([0.97, 0.98, 0.96])]
    noisy += [summary("residual", i, a) for i, a in enumerate([0.976, 0.965, 0.972])]
    assert "within the noise, no winner" in C.verdict(C.statistics(noisy))


def test_single_seed_verdict_says_seed_noise_is_unmeasured() -> None:
    s = C.statistics([summary("plain", 0, 0.95), summary("residual", 0, 0.99)])
    assert s.method.startswith("binomial")
    text = C.verdict(s)
    assert "residual wins" in text and "not measured" in text


def test_seed_groups_are_reused(client) -> None:
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    first = C.seed_group(client, exp_id, "smoke", [0, 1])
    assert C.seed_group(client, exp_id, "smoke", [0, 1]) == first
    assert C.seed_group(client, exp_id, "smoke", [0, 1, 2]) != first
