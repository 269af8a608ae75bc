"""Compare: run selection, statistics, outputs read back from MLflow, the champion alias."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import pytest
from mlflow.entities import Param, Run, RunData, RunInfo, RunTag
from mlflow.tracking import MlflowClient

from resnet_mnist.analysis import compare as C
from resnet_mnist.analysis import selection as SEL
from resnet_mnist.analysis.scoring import FullSplitScorer
from resnet_mnist.config.settings import build_config
from resnet_mnist.core.figures import History
from resnet_mnist.tracking.request import RunRequest
from resnet_mnist.tracking.runner import train
from tests.conftest import REAL_ROOT, copy_store

EXP = "resnet18-mnist"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_compared):
    """A copy of the session's store with one smoke run of each variant, both already scored on
    the full splits by `resnet-mnist compare` (`smoke_compared`: the scoring is done once per
    session; what it logged is what these tests read back)."""
    tmp = tmp_path_factory.mktemp("store")
    uri = copy_store(smoke_compared, tmp)
    with pytest.MonkeyPatch.context() as mp:
        # first into the folder: MLflow fixes a store's artifact root (./mlruns) when it first
        # opens it, and experiments made later in this module must keep theirs in the copy
        mp.chdir(tmp)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RESNET_MNIST_DATA", str(REAL_ROOT))
        mlflow.set_tracking_uri(uri)
        client = MlflowClient(uri)
        trains = client.search_runs(
            [client.get_experiment_by_name(EXP).experiment_id], "tags.run_type = 'train'"
        )
        ids = {r.data.tags["variant"]: r.info.run_id for r in trains}
        assert set(ids) == set(C.VARIANTS)
        yield tmp, uri, ids


@pytest.fixture
def client(trained, monkeypatch):
    tmp, uri, _ = trained
    monkeypatch.chdir(tmp)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return MlflowClient(uri)


@pytest.mark.slow  # a pair of real trainings, scored (`smoke_compared`, processes of their own)
def test_default_selection_is_latest_run_per_variant(trained, client) -> None:
    _, _, ids = trained
    runs = SEL.select_runs(client, EXP, "smoke")
    assert [r.info.run_id for r in runs] == [ids["plain"], ids["residual"]]
    assert SEL.select_runs(client, EXP, "seed") == []
    only = SEL.select_runs(client, EXP, where="tags.variant = 'residual'")
    assert [r.info.run_id for r in only] == [ids["residual"]]


@pytest.mark.slow  # a pair of real trainings, scored (`smoke_compared`, processes of their own)
def test_existing_runs_with_same_params_are_reused(trained, client) -> None:
    _, _, ids = trained
    exp_id = client.get_experiment_by_name(EXP).experiment_id

    def must_not_train(config, parent):
        raise AssertionError(f"retrained {config.variant}")

    got = SEL.ensure_runs(client, exp_id, "smoke", None, must_not_train)
    assert got == [ids["plain"], ids["residual"]]
    calls = []
    SEL.ensure_runs(
        client, exp_id, "smoke", None, lambda c, p: calls.append(c.epochs) or "x", overrides={"epochs": 2}
    )
    assert calls == [2, 2]


@pytest.mark.slow
def test_compare_outputs_match_mlflow_and_register_dev_winner(trained, client, tmp_path) -> None:
    _, _, ids = trained
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    runs = SEL.select_runs(client, EXP, "smoke")
    result = C.compare(client, runs, tmp_path / "out", exp_id, "digits")

    for name in ("comparison.png", "comparison.pdf", "comparison.md", "comparison.csv", "verdict.txt"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    with open(tmp_path / "out" / "comparison.csv") as fh:
        rows = {r["variant"]: r for r in csv.DictReader(fh)}
    for variant, run_id in ids.items():
        run = client.get_run(run_id)
        m = run.data.metrics
        assert rows[variant]["dev acc (10k)"] == f"{m['dev_accuracy_full']:.4f}"
        assert rows[variant]["best dev acc (book)"] == f"{m['best_dev_accuracy']:.4f}"
        assert rows[variant]["depth"] == "18"
        assert rows[variant]["test acc (book)"] == f"{m['test_accuracy']:.4f}"
        assert rows[variant]["test acc (10k)"] == f"{m['test_accuracy_full']:.4f}"
        assert 0.5 < m["test_accuracy_full"] <= 1.0 and 0.5 < m["dev_accuracy_full"] <= 1.0
        assert m["dev_loss_full"] > 0
        assert rows[variant]["run id"] == run_id[:8]

    comparison = client.get_run(result.run_id)
    assert comparison.data.tags["run_type"] == "comparison"
    assert comparison.data.tags["compared_run_ids"] == f"{ids['plain']},{ids['residual']}"
    assert "comparison/comparison.png" in {a.path for a in client.list_artifacts(result.run_id, "comparison")}
    assert comparison.data.tags["mlflow.note.content"] == result.verdict

    # every compared run carries its full-test evaluation, also on its LoggedModel
    for run_id in ids.values():
        run = client.get_run(run_id)
        assert {
            "evaluation/confusion_matrix.json",
            "evaluation/confusion_matrix.png",
            "evaluation/mistakes.png",
        } <= {a.path for a in client.list_artifacts(run_id, "evaluation")}
        confusion = json.loads(
            mlflow.artifacts.load_text(f"runs:/{run_id}/evaluation/confusion_matrix.json")
        )["matrix"]
        assert np.trace(confusion) / np.sum(confusion) == pytest.approx(
            run.data.metrics["test_accuracy_full"]
        )
        assert np.sum(confusion) == 10_000
        # per-digit scores are one table and one figure, not thirty single-point metrics
        assert not [key for key in run.data.metrics if "digit" in key or "/" in key.removeprefix("system/")]
        assert {"evaluation/per_digit.json", "evaluation/per_digit.png"} <= {
            a.path for a in client.list_artifacts(run_id, "evaluation")
        }
        table = client.load_table(exp_id, "evaluation/per_digit.json", run_ids=[run_id])
        assert table["digit"].tolist() == list(range(10)) and table["support"].sum() == 10_000
        recall = np.diag(confusion) / np.sum(confusion, axis=1)
        assert table["recall"].tolist() == pytest.approx(recall.tolist(), abs=1e-6)
        assert '"evaluation/per_digit.json"' in run.data.tags["mlflow.loggedArtifacts"]
        model = mlflow.get_logged_model(run.outputs.model_outputs[0].model_id)
        model_files = {a.path for a in client.list_logged_model_artifacts(model.model_id, "evaluation")}
        assert {
            "evaluation/per_digit.json",
            "evaluation/per_digit.png",
            "evaluation/confusion_matrix.png",
        } <= model_files
        for split in ("dev", "test"):
            key = f"{split}_accuracy_full"
            full = [m for m in model.metrics if m.key == key]
            assert [(m.value, m.dataset_name, m.step) for m in full] == [
                (run.data.metrics[key], f"mnist-{split}", int(run.data.metrics["best_step"]))
            ]

    # the comparison run holds each variant's mean curve and band as step metrics
    curve = client.get_metric_history(result.run_id, "train_loss/plain_mean")
    plain_loss = client.get_metric_history(ids["plain"], "train_loss")
    assert [m.step for m in curve] == [m.step for m in plain_loss]
    assert [m.value for m in curve] == pytest.approx([m.value for m in plain_loss])
    assert {"dev_accuracy/residual_mean", "dev_accuracy/residual_min", "dev_accuracy/residual_max"} <= set(
        comparison.data.metrics
    )

    # the statistic, the winning variant and the champion come from the full dev split
    dev = {v: client.get_run(i).data.metrics["dev_accuracy_full"] for v, i in ids.items()}
    winner = max(C.VARIANTS, key=lambda v: (dev[v], v == "residual"))
    assert result.stats.diff == pytest.approx(dev["residual"] - dev["plain"])
    assert comparison.data.metrics["diff_dev_accuracy_full"] == pytest.approx(result.stats.diff)
    assert comparison.data.tags["statistic"] == "dev_accuracy_full"
    assert "10,000 dev images" in result.stats.method
    assert "Held out, deciding nothing" in result.verdict
    champion = client.get_model_version_by_alias("digits", "champion")
    assert champion.run_id == ids[winner] and champion.tags["variant"] == winner
    # the registered version is the LoggedModel (which lists the version) and carries its scores
    model_id = client.get_run(ids[winner]).outputs.model_outputs[0].model_id
    assert champion.source == f"models:/{model_id}"
    versions = json.loads(mlflow.get_logged_model(model_id).tags["mlflow.modelVersions"])
    assert {"name": "digits", "version": champion.version} in versions
    assert champion.tags["dev_accuracy_full"] == f"{dev[winner]:.4f}"
    assert champion.tags["selected_by"] == "dev_accuracy_full"
    assert result.champion_uri == "models:/digits@champion"
    assert result.champion_note.startswith("champion is now version 1: the first champion")

    # the same comparison again: the champion is this run already, nothing is registered twice
    again = C.compare(client, runs, tmp_path / "out2", exp_id, "digits")
    assert again.champion_version == "1" and "it is this run already" in again.champion_note
    assert [str(v.version) for v in client.search_model_versions("name = 'digits'")] == ["1"]
    assert client.get_run(again.run_id).data.tags["champion_moved"] == "false"


@pytest.mark.slow  # the full dev and test splits scored for both runs
def test_champion_loads_by_alias(trained, client, tmp_path) -> None:
    from resnet_mnist.core import data as D

    exp_id = client.get_experiment_by_name(EXP).experiment_id
    C.compare(client, SEL.select_runs(client, EXP, "smoke"), tmp_path, exp_id, "byalias")
    model = mlflow.pyfunc.load_model("models:/byalias@champion")
    mnist = D.load(REAL_ROOT)
    probs = model.predict(mnist.test_images[:100].copy())
    assert (probs.argmax(1) == mnist.test_labels[:100]).mean() > 0.5


@pytest.mark.slow  # a pair of real trainings, scored (`smoke_compared`, processes of their own)
def test_only_one_variant_is_a_clear_error(trained, client, tmp_path) -> None:
    _, _, ids = trained
    with pytest.raises(C.CompareError, match="found only: residual"):
        C.compare(
            client,
            [client.get_run(ids["residual"])],
            tmp_path,
            client.get_experiment_by_name(EXP).experiment_id,
            None,
        )


def test_missing_experiment_is_a_clear_error(store: str) -> None:
    with pytest.raises(C.CompareError, match="does not exist"):
        SEL.select_runs(MlflowClient(), "no-such-experiment", "seed")


def summary(variant: str, seed: int, acc: float, dev: float = 0.9) -> C.RunSummary:
    """A run whose full-dev accuracy is `acc` (test 1 point lower) and book dev accuracy `dev`."""
    return C.RunSummary(
        f"{variant}{seed}",
        variant,
        seed,
        18,
        best_dev_accuracy=dev,
        test_accuracy=acc - 0.01,
        test_loss=0.1,
        dev_accuracy_full=acc,
        dev_loss_full=0.1,
        test_accuracy_full=acc - 0.01,
        test_loss_full=0.1,
        param_count=1,
        macs=1,
        train_time_s=1.0,
        history=History(),
    )


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


def test_seed_groups_are_reused(store: str) -> None:
    client = MlflowClient()
    exp_id = client.create_experiment(EXP)
    first = SEL.seed_group(client, exp_id, "smoke", [0, 1])
    assert SEL.seed_group(client, exp_id, "smoke", [0, 1]) == first
    assert SEL.seed_group(client, exp_id, "smoke", [0, 1, 2]) != first


def test_unpaired_seeds_use_welch_and_the_dev_split_size() -> None:
    from scipy import stats

    plain, residual = [0.970, 0.975, 0.972], [0.980, 0.984]
    runs = [summary("plain", i, a) for i, a in enumerate(plain)]
    runs += [summary("residual", i + 10, a) for i, a in enumerate(residual)]
    s = C.statistics(runs)
    assert s.method == "Welch t over 2 + 3 unpaired seeds"
    low, high = stats.ttest_ind(residual, plain, equal_var=False).confidence_interval()
    assert s.ci == pytest.approx((low, high))
    single = C.statistics([summary("plain", 0, 0.95), summary("residual", 0, 0.96)])
    se = np.sqrt(0.95 * 0.05 / 10_000 + 0.96 * 0.04 / 10_000)
    assert single.ci == pytest.approx((0.01 - 1.96 * se, 0.01 + 1.96 * se))
    assert "10,000 dev images" in single.method


# -- vetting the runs: settings, duplicates, the newest matching pair (no store needed) ---------


def fake_run(
    run_id: str, variant: str, start: int, preset: str = "seed", *, drop: tuple[str, ...] = (), **overrides
) -> Run:
    """A FINISHED training run as MLflow returns it, with the params `train` would log."""
    config = build_config(preset, variant == "residual", overrides)
    params = {k: str(v) for k, v in config.params().items() if k not in drop}
    params["device"] = "cpu" if start % 2 else "cuda:0"
    return Run(
        RunInfo(run_id, "0", "", "FINISHED", start, start + 1, "active"),
        RunData(
            params=[Param(k, v) for k, v in params.items()],
            tags=[RunTag("variant", variant), RunTag("preset", preset)],
        ),
    )


def test_settings_match_across_variants_of_a_preset_but_not_with_overrides() -> None:
    plain, residual = fake_run("p", "plain", 1), fake_run("r", "residual", 2)
    assert SEL.settings(plain) == SEL.settings(residual)
    assert SEL.settings(plain)["lr"] == "seed preset, per variant"
    assert {"seed", "device", "use_residual", "variant"}.isdisjoint(SEL.settings(plain))
    assert SEL.differences([plain, fake_run("r", "residual", 3, seed=7)]) == {}
    faster = fake_run("r2", "residual", 4, lr=0.02)
    diff = SEL.differences([plain, faster])
    assert list(diff) == ["lr"] and set(diff["lr"]) == {"seed preset, per variant", "0.02"}
    # the same override on both variants is the same setting again
    assert SEL.differences([fake_run("p2", "plain", 5, lr=0.02), faster]) == {}
    # a run from before `depth` existed is a ResNet18; a ResNet34 is not
    assert SEL.differences([fake_run("old", "plain", 6, drop=("depth",)), residual]) == {}
    assert list(SEL.differences([plain, fake_run("deep", "residual", 7, depth=34)])) == ["depth"]


def test_explicit_mismatch_is_refused_with_the_differences_unless_allowed() -> None:
    runs = [fake_run("aaaaaaaa1", "plain", 1), fake_run("bbbbbbbb2", "residual", 2, epochs=2)]
    with pytest.raises(C.CompareError) as err:
        SEL.vet(runs)
    message = str(err.value)
    assert "\n" not in message and "--allow-mismatch" in message
    assert "epochs: 5 (plain aaaaaaaa) vs 2 (residual bbbbbbbb)" in message
    assert list(SEL.vet(runs, allow_mismatch=True).mismatch) == ["epochs"]


def test_duplicate_seeds_keep_the_newest_and_set_the_others_aside() -> None:
    old, new = fake_run("old", "residual", 1), fake_run("new", "residual", 5)
    plain = fake_run("p", "plain", 3)
    other_seed = fake_run("s1", "residual", 2, seed=1)
    vetted = SEL.vet([old, plain, new, other_seed, plain])
    assert [r.info.run_id for r in vetted.runs] == ["p", "s1", "new"]
    assert [r.info.run_id for r in vetted.set_aside] == ["old"]


def test_default_selection_takes_the_newest_matching_pair() -> None:
    newest_first = [
        fake_run("r-lr", "residual", 9, lr=0.02),
        fake_run("r", "residual", 8),
        fake_run("p-old", "plain", 2),
        fake_run("p", "plain", 7),
        fake_run("p-ep", "plain", 6, epochs=1),
    ]
    newest_first.sort(key=lambda r: -r.info.start_time)
    assert [r.info.run_id for r in SEL.newest_pair(newest_first)] == ["p", "r"]
    unrelated = [fake_run("r-lr", "residual", 9, lr=0.02), fake_run("p-ep", "plain", 6, epochs=1)]
    with pytest.raises(C.CompareError, match=r"share their settings.*epochs: 1 \(plain p-ep\)"):
        SEL.newest_pair(unrelated)
    assert [r.info.run_id for r in SEL.newest_pair(unrelated, allow_mismatch=True)] == ["p-ep", "r-lr"]
    assert [r.info.run_id for r in SEL.newest_pair(unrelated[:1])] == ["r-lr"]


# -- runs with other settings, in their own experiment, and the champion --------------------------

OTHER = "overrides"


@pytest.fixture(scope="module")
def overridden(trained):
    """Smoke runs trained with lr 0.02: one plain, and two residual with the same seed (the
    second is a duplicate), in experiment `overrides`."""
    tmp, uri, _ = trained
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("RESNET_MNIST_DATA", str(REAL_ROOT))
        mlflow.set_tracking_uri(uri)
        ids = {
            name: train(
                RunRequest(build_config("smoke", name != "plain", {"lr": 0.02}), experiment=OTHER)
            ).run_id
            for name in ("plain", "residual-old", "residual")
        }
    return ids


@pytest.mark.slow
def test_runs_trained_with_overrides_are_not_compared_with_default_ones(
    trained, overridden, client, tmp_path
) -> None:
    _, _, ids = trained
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    mixed = SEL.select_runs(client, EXP, run_ids=[ids["plain"], overridden["residual"]])
    with pytest.raises(C.CompareError, match=r"lr: 0\.01 \(plain \w{8}\) vs 0\.02 \(residual"):
        C.compare(client, mixed, tmp_path / "refused", exp_id, "never")
    assert not client.search_registered_models("name = 'never'")

    result = C.compare(client, mixed, tmp_path / "allowed", exp_id, None, allow_mismatch=True)
    assert result.mismatch.startswith("lr: 0.01") and "Caution (--allow-mismatch)" in result.verdict
    assert client.get_run(result.run_id).data.tags["settings_mismatch"] == result.mismatch


@pytest.mark.slow
def test_default_and_filtered_selection_of_runs_with_a_duplicate_seed(overridden, client, tmp_path) -> None:
    pair = SEL.select_runs(client, OTHER, "smoke")
    assert [r.info.run_id for r in pair] == [overridden["plain"], overridden["residual"]]
    everything = SEL.select_runs(client, OTHER, where="tags.preset = 'smoke'")
    assert len(everything) == 3
    exp_id = client.get_experiment_by_name(OTHER).experiment_id
    result = C.compare(client, everything, tmp_path, exp_id, None)
    assert [s.run_id for s in result.summaries] == [overridden["plain"], overridden["residual"]]
    assert result.set_aside == [overridden["residual-old"]]
    assert f"residual {overridden['residual-old'][:8]}" in result.verdict
    tags = client.get_run(result.run_id).data.tags
    assert tags["set_aside_run_ids"] == overridden["residual-old"]


def candidates(client, trained, overridden) -> dict[str, tuple[list[Run], float]]:
    """Two comparable pairs (defaults, lr 0.02) and the full-dev accuracy of each one's winner."""
    _, _, ids = trained
    scorer, out = FullSplitScorer(client), {}
    for name, pair in (
        ("default", [ids["plain"], ids["residual"]]),
        ("lr", [overridden["plain"], overridden["residual"]]),
    ):
        scores = [scorer(client.get_run(i)).dev_accuracy for i in pair]
        out[name] = [client.get_run(i) for i in pair], max(scores)
    assert out["default"][1] != out["lr"][1], "the two pairs tie on dev: pick another override"
    return out


@pytest.mark.slow
@pytest.mark.parametrize("order", [("default", "lr"), ("lr", "default")])
def test_champion_moves_only_to_a_model_at_least_as_good_on_dev(
    trained, overridden, client, tmp_path, order
) -> None:
    pairs = candidates(client, trained, overridden)
    exp_id = client.get_experiment_by_name(EXP).experiment_id
    name = f"ordered-{'-'.join(order)}"
    first, second = (C.compare(client, pairs[k][0], tmp_path / k, exp_id, name) for k in order)
    best = max(pairs, key=lambda k: pairs[k][1])
    champion = client.get_model_version_by_alias(name, "champion")
    assert float(champion.tags["dev_accuracy_full"]) == pytest.approx(pairs[best][1], abs=1e-4)
    if best == order[0]:
        assert second.champion_version == "1"
        assert second.champion_note.startswith("champion stays version 1: dev ")
        assert len(client.search_model_versions(f"name = '{name}'")) == 1
    else:
        assert second.champion_version == "2" and "≥" in second.champion_note


@pytest.mark.slow
def test_concurrent_compares_leave_the_better_model_as_champion(
    trained, overridden, client, tmp_path
) -> None:
    import threading

    from tests.conftest import cli

    tmp, uri, _ = trained
    pairs = candidates(client, trained, overridden)
    results = {}

    def run(key: str) -> None:
        ids = ",".join(r.info.run_id for r in pairs[key][0])
        results[key] = cli(
            "compare",
            "--runs",
            ids,
            "--model-name",
            "raced",
            "--out",
            str(tmp_path / key),
            cwd=tmp,
            env={"MLFLOW_TRACKING_URI": uri},
        )

    threads = [threading.Thread(target=run, args=(k,)) for k in pairs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for out in results.values():
        assert out.returncode == 0, out.stderr[-2000:]
    best = max(pairs, key=lambda k: pairs[k][1])
    champion = client.get_model_version_by_alias("raced", "champion")
    assert float(champion.tags["dev_accuracy_full"]) == pytest.approx(pairs[best][1], abs=1e-4)
    assert champion.run_id in {r.info.run_id for r in pairs[best][0]}
    assert any("champion stays" in " ".join(o.stdout.split()) or "≥" in o.stdout for o in results.values())


# -- a tuned comparison: each variant at its own search's best settings -------------------------


def tune_run(client: MlflowClient, variant: str, settings: dict, preset: str = "smoke", **base) -> str:
    """A complete tune search as `tune` leaves it: its tags, and its best trial's run with the
    params that trial trained (the preset's, `base` overrides, the searched `settings`)."""
    from resnet_mnist.tracking import names

    exp = client.get_experiment_by_name(names.TUNE_EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(names.TUNE_EXPERIMENT)
    config = build_config(preset, variant == "residual", base | settings)
    best = client.create_run(exp_id)
    for key, value in config.params().items():
        client.log_param(best.info.run_id, key, value)
    client.set_terminated(best.info.run_id, "FINISHED")
    tags = {
        names.RUN_TYPE: names.TUNE,
        names.PRESET: preset,
        names.ARCHITECTURE: config.architecture,
        names.TUNE_STATUS: "complete",
        names.TUNE_BEST_RUN: best.info.run_id,
        names.TUNE_BEST_SETTINGS: json.dumps(settings),
    }
    run = client.create_run(exp_id, tags=tags)
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def test_a_tuned_comparison_trains_each_variant_at_its_own_searchs_settings(store: str) -> None:
    client = MlflowClient()
    with pytest.raises(C.CompareError, match="no complete tune search of preset 'smoke' for the plain"):
        SEL.tuned_settings(client, "smoke")
    plain = tune_run(client, "plain", {"lr": 0.05, "momentum": 0.5})
    with pytest.raises(C.CompareError, match="run `resnet-mnist tune --preset smoke --use-residual true`"):
        SEL.tuned_settings(client, "smoke")
    tune_run(client, "residual", {"lr": 0.02})
    # a newer search of another base (more epochs) is not the preset's
    tune_run(client, "residual", {"lr": 0.3}, epochs=5)
    tuned = SEL.tuned_settings(client, "smoke")
    assert tuned["plain"] == SEL.Tuned(plain, {"lr": 0.05, "momentum": 0.5})
    assert tuned["residual"].settings == {"lr": 0.02}
    trained: list = []

    def train(config, parent):
        trained.append(config)
        run = client.create_run(client.get_experiment_by_name(EXP).experiment_id)
        for key, value in config.params().items():
            client.log_param(run.info.run_id, key, value)
        client.set_tag(run.info.run_id, "run_type", "train")
        client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    client.create_experiment(EXP)
    runs = SEL.choose_runs(client, EXP, "smoke", train=train, tuned=tuned)
    assert [(c.variant, c.lr, c.momentum, c.epochs) for c in trained] == [
        ("plain", 0.05, 0.5, 3),
        ("residual", 0.02, 0.0, 3),
    ]
    # asked again, the tuned runs are found, not trained again
    again = SEL.choose_runs(client, EXP, "smoke", train=train, tuned=tuned)
    assert [r.info.run_id for r in again] == [r.info.run_id for r in runs] and len(trained) == 2
    # the verdict says the variants were compared at their own settings, not "Caution"
    stats = C.statistics([summary("plain", 0, 0.95), summary("residual", 0, 0.99)])
    text = C.judged(stats, "lr: 0.05 (plain 1) vs 0.02 (residual 2)", [], tuned=True)
    assert "Each variant at its own tuned settings (--tuned)" in text and "Caution" not in text
    assert "lr: 0.05 (plain 1) vs 0.02 (residual 2)" in text
