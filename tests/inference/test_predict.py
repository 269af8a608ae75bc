"""Predict and compare through the CLI, as a user runs them: seeds, champion, real digit images."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from resnet_mnist.core import data as D
from resnet_mnist.inference.predict import PredictError, load_digit
from tests.conftest import REPO, Champion, cli


def save_digits(mnist: D.Mnist, folder: Path, count: int) -> list[tuple[Path, int]]:
    """Real test digits as files: some as MNIST has them, some dark-on-light, larger, RGB JPEG."""
    folder.mkdir()
    out = []
    for i in range(count):
        image = Image.fromarray(mnist.test_images[i])
        if i % 2:
            path = folder / f"digit{i}.jpg"
            Image.fromarray(255 - mnist.test_images[i]).resize((112, 112)).convert("RGB").save(path)
        else:
            path = folder / f"digit{i}.png"
            image.save(path)
        out.append((path, int(mnist.test_labels[i])))
    return out


def test_load_digit_inverts_dark_on_light(tmp_path: Path, mnist: D.Mnist) -> None:
    ((png, _), (jpg, _)) = save_digits(mnist, tmp_path / "d", 2)
    assert np.array_equal(load_digit(png), mnist.test_images[0])
    restored = load_digit(jpg).astype(int)
    assert np.abs(restored - mnist.test_images[1]).mean() < 20
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(PredictError, match="not an image"):
        load_digit(tmp_path / "x.png")


TINY = str(REPO / "tests" / "presets" / "tiny.yaml")


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, real_root: Path) -> tuple[Path, dict[str, str], str]:
    """A store of its own where `compare --seeds 2` trained both variants at two seeds (tiny
    preset: the seed groups are the point, not the figures): (home, env, compare's output)."""
    home = tmp_path_factory.mktemp("seeds")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}"}
    out = cli("compare", "--preset", TINY, "--seeds", "2", cwd=home, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return home, env, out.stdout


@pytest.mark.slow
def test_compare_seeds_nests_runs_in_a_group_and_registers_a_champion(seeded) -> None:
    home, env, stdout = seeded
    assert "models:/resnet18-mnist@champion" in stdout
    assert "paired t over 2 seeds" in " ".join(stdout.split())
    assert (home / "reports" / "compare" / "comparison.png").is_file()
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name("resnet18-mnist")
    runs = client.search_runs([exp.experiment_id])
    groups = [r for r in runs if r.data.tags.get("run_type") == "seed_group"]
    trains = [r for r in runs if r.data.tags.get("run_type") == "train"]
    assert len(groups) == 1 and len(trains) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in trains} == {groups[0].info.run_id}
    assert sorted((r.data.tags["variant"], r.data.params["seed"]) for r in trains) == [
        ("plain", "0"),
        ("plain", "1"),
        ("residual", "0"),
        ("residual", "1"),
    ]
    assert all(r.info.status == "FINISHED" for r in runs)
    # the comparison has its own experiment, so the training runs' charts hold training only
    comparisons = client.get_experiment_by_name("resnet18-mnist-comparisons")
    (comparison,) = client.search_runs([comparisons.experiment_id])
    assert comparison.data.tags["run_type"] == "comparison"
    for experiment_id, run_id in (
        (exp.experiment_id, ""),
        (comparisons.experiment_id, f"/runs/{comparison.info.run_id}"),
    ):
        link = f"http://127.0.0.1:5000/#/experiments/{experiment_id}{run_id}?workflowType=machine_learning"
        assert link in stdout

    again = cli("compare", "--preset", TINY, "--seeds", "2", "--no-register", cwd=home, env=env)
    assert again.returncode == 0
    assert len(client.search_runs([exp.experiment_id], "tags.run_type = 'train'")) == 4


@pytest.mark.slow
def test_presented_scores_are_logged_to_the_champion(seeded) -> None:
    """Digits as people bring them, scored per digit into one table and figure on the champion."""
    home, env, _ = seeded
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    presented = cli(
        "predict", "--presented", "40", "--presentations", "mnist,tight", "--log", cwd=home, env=env
    )
    assert presented.returncode == 0, presented.stderr[-3000:]
    printed = {
        line.split(" as ")[1].split(":")[0]: float(line.rsplit(": ", 1)[1])
        for line in presented.stdout.splitlines()
        if line.startswith("accuracy on the first 40 test digits as ")
    }
    assert set(printed) == {"mnist", "tight"}
    model_id = presented.stdout.split(" of model ")[1].split()[0]
    model = client.get_logged_model(model_id)
    assert model.source_run_id == client.get_model_version_by_alias("resnet18-mnist", "champion").run_id
    files = {a.path for a in client.list_logged_model_artifacts(model_id, "evaluation")}
    assert {"evaluation/presented.json", "evaluation/presented.png"} <= files
    run_files = {a.path for a in client.list_artifacts(model.source_run_id, "evaluation")}
    assert {"evaluation/presented.json", "evaluation/presented.png"} <= run_files
    local = client.download_artifacts(model.source_run_id, "evaluation/presented.json", str(home))
    table = pd.read_json(local, orient="split")
    assert table.groupby("set")["support"].sum().to_dict() == {"mnist": 40, "tight": 40}
    right = (table["recall"] * table["support"]).groupby(table["set"]).sum() / 40
    assert right.to_dict() == pytest.approx(printed, abs=1e-4)
    some_file = home / "reports" / "compare" / "comparison.png"
    no_scores = cli("predict", str(some_file), "--log", cwd=home, env=env)
    assert no_scores.returncode == 2 and "give --presented N too" in re.sub(r"[\s│]+", " ", no_scores.stderr)


@pytest.mark.slow
def test_the_champion_reads_files_folders_globs_and_numbers(
    champion: Champion, mnist: D.Mnist, tmp_path: Path
) -> None:
    env = champion.env
    digits = save_digits(mnist, tmp_path / "digits", 10)
    (tmp_path / "digits" / "nested").mkdir()
    (tmp_path / "digits" / "nested" / "broken.png").write_text("not an image")
    pred = cli("predict", str(tmp_path / "digits"), "--mnist-test", "500", cwd=tmp_path, env=env)
    # the broken file is reported on its line, the others are classified, and the exit is 1
    assert pred.returncode == 1 and "broken.png: not an image" in pred.stderr, pred.stderr[-3000:]
    assert "1 of 11 images could not be classified" in pred.stderr
    answers = {
        line.rsplit(": ", 1)[0]: int(line.rsplit(": ", 1)[1].split()[0])
        for line in pred.stdout.splitlines()
        if line.startswith(str(tmp_path))
    }
    assert set(answers) == {str(p) for p, _ in digits}
    correct = sum(answers[str(p)] == label for p, label in digits)
    assert correct >= 8, pred.stdout
    accuracy = float(pred.stdout.split("MNIST test images:")[1].split()[0])
    assert accuracy > 0.8

    # the same answers, machine-readable, with the top-3 probabilities
    as_json = cli("predict", *[str(p) for p, _ in digits], "--format", "json", cwd=tmp_path, env=env)
    assert as_json.returncode == 0, as_json.stderr[-3000:]
    records = json.loads(as_json.stdout)
    assert [r["path"] for r in records] == [str(p) for p, _ in digits]
    for record in records:
        assert record["digit"] == answers[record["path"]] == record["top"][0]["digit"]
        assert record["sure"] is True  # no --min-confidence: every answer is given
        probabilities = [t["probability"] for t in record["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert record["probability"] == probabilities[0] and sum(probabilities) <= 1 + 1e-5
    as_csv = cli("predict", str(tmp_path / "digits" / "*.png"), "--format", "csv", cwd=tmp_path, env=env)
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert as_csv.returncode == 0 and [r["path"] for r in rows] == sorted(
        str(p) for p, _ in digits if p.suffix == ".png"
    )
    assert all(int(r["digit"]) == answers[r["path"]] == int(r["top1"]) for r in rows)

    # a number: three test digits written side by side, read left to right
    row = np.full((120, 330), 255, np.uint8)
    for k in range(3):
        row[10:110, 10 + k * 110 : 110 + k * 110] = 255 - np.asarray(
            Image.fromarray(mnist.test_images[k]).resize((100, 100))
        )
    Image.fromarray(row).save(tmp_path / "number.png")
    number = cli(
        "predict", str(tmp_path / "number.png"), "--number", "--format", "json", cwd=tmp_path, env=env
    )
    assert number.returncode == 0, number.stderr[-3000:]
    (record,) = json.loads(number.stdout)
    assert len(record["digits"]) == 3 and record["number"] == "".join(
        str(d["digit"]) for d in record["digits"]
    )
    assert sum(d["digit"] == y for d, y in zip(record["digits"], mnist.test_labels[:3], strict=True)) >= 2


@pytest.mark.slow
def test_below_the_least_confidence_the_answer_is_not_sure(
    champion: Champion, mnist: D.Mnist, tmp_path: Path
) -> None:
    """--min-confidence turns the answers less likely than it into 'not sure' with the likeliest
    digits (the same probabilities: calibration happened when the model was logged), and
    --non-digits counts how often the model is sure of a digit on images that are not digits."""
    env = champion.env
    digits = [p for p, _ in save_digits(mnist, tmp_path / "digits", 6)]
    plain = json.loads(cli("predict", *map(str, digits), "--format", "json", cwd=tmp_path, env=env).stdout)
    low, high = sorted({r["probability"] for r in plain})[:2]
    least = (low + high) / 2  # the least likely answer(s) fall below it, the others above
    below = sum(r["probability"] == low for r in plain)
    strict = cli(
        "predict",
        *map(str, digits),
        "--min-confidence",
        f"{least:.9f}",
        "--format",
        "json",
        cwd=tmp_path,
        env=env,
    )
    assert strict.returncode == 0, strict.stderr[-3000:]
    records = json.loads(strict.stdout)
    for before, after in zip(plain, records, strict=True):
        assert after["probability"] == before["probability"] and after["top"] == before["top"]
        assert after["sure"] is (after["probability"] >= least)
        assert after["digit"] == (before["digit"] if after["sure"] else None)
    assert sum(not r["sure"] for r in records) == below
    table = cli("predict", *map(str, digits), "--min-confidence", f"{least:.9f}", cwd=tmp_path, env=env)
    assert table.stdout.count("not sure (p < ") == below == table.stdout.count(": perhaps ")

    scored = cli(
        "predict", "--presented", "30", "--presentations", "mnist,tight", "--min-confidence", "0.9",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    assert scored.returncode == 0, scored.stderr[-3000:]
    for name in ("mnist", "tight"):
        pattern = rf"as {name}: ([0-9.]+); sure \(p >= 0.9\) of ([0-9.]+)% of them, (\S+)% of"
        line = re.search(pattern, scored.stdout)
        assert line, scored.stdout
        accuracy, answered = float(line[1]), float(line[2]) / 100
        assert 0 <= answered <= 1 and 0 <= accuracy <= 1
        # 30 digits: every share is a whole number of them
        assert round(accuracy * 30, 2) == round(accuracy * 30)
        assert round(answered * 30, 1) == round(answered * 30)

    counted = cli("predict", "--non-digits", "12", "--min-confidence", "0.9", cwd=tmp_path, env=env)
    assert counted.returncode == 0, counted.stderr[-3000:]
    text = " ".join(counted.stdout.split())
    assert "12 images that are not digits" in text and "temperature" in text
    for kind in ("letter", "smudge", "texture", "thing"):
        assert re.search(rf"{kind} +\d+ of 3 before calibration, +\d+ after", counted.stdout), counted.stdout


@pytest.mark.slow
def test_predict_errors(tmp_path: Path, mnist: D.Mnist) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ((png, _),) = save_digits(mnist, tmp_path / "d", 1)
    out = cli(
        "predict",
        str(png),
        "--model-uri",
        "models:/nothing@champion",
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    assert out.returncode == 1 and "cannot load model 'models:/nothing@champion'" in out.stderr
    (tmp_path / "fake.png").write_bytes(b"\x89PNG garbage")
    out = cli("predict", str(tmp_path / "fake.png"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": uri})
    assert out.returncode == 1 and "fake.png: not an image" in out.stderr


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A real 1x1 PNG whose header claims `width` x `height` pixels (what a bomb looks like)."""
    import struct
    import zlib

    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 bytes of header data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))


def test_valid_images_are_read_as_a_person_sees_them(tmp_path: Path, mnist: D.Mnist) -> None:
    digit = mnist.test_images[0]
    zeros = np.zeros_like(digit)
    # dark ink on a transparent background, and light ink on one: the digit survives both
    Image.fromarray(np.dstack([zeros, zeros, zeros, digit]), "RGBA").save(tmp_path / "dark.png")
    Image.fromarray(np.dstack([zeros + 255] * 3 + [digit]), "RGBA").save(tmp_path / "light.png")
    for name in ("dark.png", "light.png"):
        assert np.array_equal(load_digit(tmp_path / name), digit), name
    # 16-bit greyscale: scaled to 0-255, not clipped to white
    Image.fromarray(digit.astype(np.uint16) * 257).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert np.array_equal(load_digit(tmp_path / "deep.png"), digit)
    # stored on its side with an EXIF orientation that turns it upright
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(np.rot90(digit)).save(tmp_path / "turned.png", exif=exif)
    assert np.array_equal(load_digit(tmp_path / "turned.png"), digit)


def test_an_image_too_large_to_be_a_digit_is_refused(tmp_path: Path) -> None:
    _png_claiming(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(PredictError, match="bomb.png: refused, too many pixels"):
        load_digit(tmp_path / "bomb.png")


class Trap:
    """Stands in for code inside a model: touching `marker` proves it ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).touch, ())


def test_models_that_carry_code_or_pickles_are_refused(store: str, tmp_path: Path) -> None:
    import mlflow
    import torch

    from resnet_mnist.inference.predict import load_model

    marker = tmp_path / "ran"

    class Carrier(mlflow.pyfunc.PythonModel):
        def __init__(self) -> None:
            self.trap = Trap(str(marker))

        def predict(self, context, model_input):
            return model_input

    mlflow.set_experiment("untrusted")
    with mlflow.start_run():
        example = np.zeros((1, 4), dtype=np.float32)
        # (pip_requirements given: MLflow would otherwise spend seconds inferring them)
        pickled = mlflow.pytorch.log_model(
            torch.nn.Linear(4, 2),
            name="pickled",
            serialization_format="pickle",
            input_example=example,
            pip_requirements=["torch"],
        )
        code = mlflow.pyfunc.log_model(
            name="code", python_model=Carrier(), input_example=example, pip_requirements=["mlflow"]
        )
    marker.unlink(missing_ok=True)  # MLflow itself loads the model once while logging it
    for info, why in (
        (pickled, "its weights are a pickle, not pt2"),
        (code, "it is not a pt2 PyTorch model as this project logs"),
    ):
        with pytest.raises(PredictError, match=f"refused model .*: {why}"):
            load_model(info.model_uri)
    assert not marker.exists(), "loading a refused model ran its code"
    # with the explicit opt-in the user gets what they asked for
    assert load_model(code.model_uri, allow_untrusted=True) is not None
    assert marker.exists()
    with pytest.raises(PredictError, match="cannot load model 'models:/no-such-model@x'"):
        load_model("models:/no-such-model@x")
