"""Classify real digit images with a logged or registered model, loaded by URI through MLflow."""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resnet_mnist.inference import normalise as N
from resnet_mnist.inference.images import PredictError, called, read_grey
from resnet_mnist.runtime.env import overridden
from resnet_mnist.runtime.errors import ProjectError
from resnet_mnist.tracking.requirements import mismatches

PREPROCESSING = ("mnist", "resize")  #: MNIST's normalisation; the naive whole-image resize
BATCH = 256  #: images read, normalised and classified at a time (bounds memory on long lists)


def load_digit(path: Path | bytes, preprocess: str = "mnist", name: str | None = None) -> np.ndarray:
    """An image file (or an upload's bytes) of one digit -> 28x28 uint8 as MNIST has it."""
    return as_digit(read_grey(path, name), preprocess, called(path, name))


def as_digit(grey: np.ndarray, preprocess: str = "mnist", name: str = "image") -> np.ndarray:
    """A greyscale image -> 28x28 uint8 by `preprocess` (see PREPROCESSING)."""
    if preprocess == "resize":
        return N.resize_whole(grey)
    try:
        return N.to_mnist(grey)
    except N.NoInk as exc:
        raise PredictError(f"{name}: {exc}") from None


def load_number(path: Path | bytes, name: str | None = None) -> list[np.ndarray]:
    """An image of a row of digits -> each digit as 28x28, left to right."""
    try:
        return N.split_number(read_grey(path, name))
    except N.NoInk as exc:
        raise PredictError(f"{called(path, name)}: {exc}") from None


def load_model(uri: str, allow_untrusted: bool = False):
    """The model as an MLflow pyfunc, if it is one this project logs; a missing URI or a model
    of another kind becomes one clear error.

    This project logs PyTorch models in the `pt2` (torch.export) format, which loads without
    running code. A model that carries other Python code or a pickle could run anything when
    loaded, so it is refused unless `allow_untrusted`; and MLflow's pickle deserialisation stays
    off while loading (MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from resnet_mnist.runtime.errors import first_line

    try:
        with overridden({PROGRESS_BARS: "false"}):
            flavors = mlflow.models.get_model_info(uri).flavors
    except (MlflowException, OSError) as exc:
        raise PredictError(f"cannot load model {uri!r}: {first_line(exc)}") from None
    if not allow_untrusted and not is_ours(flavors):
        raise PredictError(
            f"refused model {uri!r}: it is not a pt2 PyTorch model as this project logs (flavors: "
            f"{', '.join(sorted(flavors))}); loading it could run code it carries. Pass "
            "--allow-untrusted-model to load it anyway."
        )
    try:
        # MLflow's download progress bars are not what a person asked to see
        quiet = {PICKLE_SWITCH: "true" if allow_untrusted else "false", PROGRESS_BARS: "false"}
        with overridden(quiet), tempfile.TemporaryDirectory(prefix="resnet-mnist-model-") as tmp:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
            for mismatch in mismatches(local):  # MLflow's own check costs a second (requirements.py)
                logging.getLogger(__name__).warning("model %s: %s", uri, mismatch)
            return mlflow.pyfunc.load_model(str(local), suppress_warnings=True)
    except (MlflowException, OSError) as exc:
        if not allow_untrusted and "pickle" in str(exc).lower():
            raise PredictError(
                f"refused model {uri!r}: its weights are a pickle, not pt2 as this project logs "
                "them; loading it could run code it carries. Pass --allow-untrusted-model to "
                "load it anyway."
            ) from None
        raise PredictError(f"cannot load model {uri!r}: {first_line(exc)}") from None


PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
PROGRESS_BARS = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def is_ours(flavors: dict) -> bool:
    """A PyTorch model behind MLflow's own PyTorch loader, with no code of its own. (Whether its
    weights are pt2 or a pickle is checked by MLflow at load time with pickles switched off.)"""
    pyfunc = flavors.get("python_function", {})
    return (
        "pytorch" in flavors
        and pyfunc.get("loader_module") == "mlflow.pytorch"
        and not flavors["pytorch"].get("code")
        and not pyfunc.get("code")
    )


@dataclass
class Prediction:
    digit: int
    probability: float
    probabilities: np.ndarray

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The `k` likeliest digits with their probabilities, likeliest first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(d), float(self.probabilities[d])) for d in order]

    def sure(self, min_confidence: float) -> bool:
        """Whether the likeliest digit is at least `min_confidence` likely (a calibrated model's
        probability: how often it is right when it says so)."""
        return self.probability >= min_confidence


def temperature_of(uri: str) -> float | None:
    """The temperature a logged model divides its logits by (its LoggedModel's param), or None
    for a model logged before calibration or not by this project."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from resnet_mnist.tracking.names import TEMPERATURE

    try:
        info = mlflow.models.get_model_info(uri)
        if not info.model_id:
            return None
        value = mlflow.MlflowClient().get_logged_model(info.model_id).params.get(TEMPERATURE)
    except (MlflowException, OSError):
        return None
    return float(value) if value is not None else None


@dataclass
class Unsure:
    """How often a model was sure of a digit on images that are not digits, per kind."""

    shown: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)  #: "no ink found": never a digit
    sure_before: dict[str, int] = field(default_factory=dict)  #: at T = 1
    sure_after: dict[str, int] = field(default_factory=dict)  #: at the model's temperature


def non_digit_confidence(model, temperature: float, count: int, min_confidence: float) -> Unsure:
    """Show the model `count` images that are not digits (`core.nondigits`), read as a person's
    files are, and count how often its likeliest digit reached `min_confidence`, before the
    temperature (recovered from the calibrated probabilities) and after."""
    import torch

    from resnet_mnist.core import nondigits
    from resnet_mnist.core.calibration import uncalibrated

    unsure = Unsure()
    for kind, data in nondigits.images(count):
        unsure.shown[kind] = unsure.shown.get(kind, 0) + 1
        try:
            digit = load_digit(data, name=kind)
        except PredictError:
            unsure.refused[kind] = unsure.refused.get(kind, 0) + 1
            continue
        after = np.asarray(model.predict(digit[None].astype(np.uint8)), dtype=np.float64)
        before = uncalibrated(torch.from_numpy(after), temperature).numpy()
        for counts, probs in ((unsure.sure_before, before), (unsure.sure_after, after)):
            counts[kind] = counts.get(kind, 0) + int(probs.max() >= min_confidence)
    return unsure


def predict(model, digits: np.ndarray) -> list[Prediction]:
    """Digits (N, 28, 28) uint8 -> one Prediction each."""
    probs = np.asarray(model.predict(np.array(digits, dtype=np.uint8)))
    return [Prediction(int(p.argmax()), float(p.max()), p) for p in probs]


@dataclass
class Result:
    """One input file: its digit (or the digits of its number, left to right), or why not."""

    path: Path
    digits: list[Prediction] = field(default_factory=list)
    error: str | None = None


def classify_files(
    load: Callable[[], Any],
    paths: Iterable[Path],
    preprocess: str = "mnist",
    number: bool = False,
    batch: int = BATCH,
) -> Iterator[Result]:
    """Each file classified, in order, `batch` files at a time; a file that cannot be read is a
    Result with its error and the others go on. `load` gives the model; it is called once, when
    the first readable image needs it (so a list of unreadable files is reported without loading
    a model)."""
    model = None
    chunk: list[Path] = []
    for path in [*paths, None]:
        if path is not None:
            chunk.append(path)
            if len(chunk) < batch:
                continue
        if not chunk:
            break
        results, pieces = _read(chunk, preprocess, number)
        if pieces:
            if model is None:
                model = load()
            predictions = iter(predict(model, np.stack([d for _, d in pieces])))
            for index, _ in pieces:
                results[index].digits.append(next(predictions))
        yield from results
        chunk = []


def _read(
    chunk: list[Path], preprocess: str, number: bool
) -> tuple[list[Result], list[tuple[int, np.ndarray]]]:
    """The chunk's results (errors filled in) and its digits, each with its result's index."""
    results: list[Result] = []
    pieces: list[tuple[int, np.ndarray]] = []
    for index, path in enumerate(chunk):
        result = Result(path)
        try:
            digits = load_number(path) if number else [load_digit(path, preprocess)]
            pieces.extend((index, d) for d in digits)
        except ProjectError as exc:
            result.error = str(exc)
        results.append(result)
    return results, pieces


def mnist_test_accuracy(model, n: int, data_root: str | None = None) -> float:
    """Accuracy on the first `n` official test images, fed raw as the model expects."""
    from resnet_mnist.core import data as D

    mnist = D.load(data_root)
    if not 1 <= n <= len(mnist.test_labels):
        raise PredictError(f"--mnist-test {n} must be in 1..{len(mnist.test_labels)}")
    preds = predict(model, mnist.test_images[:n])
    return float(np.mean([p.digit == y for p, y in zip(preds, mnist.test_labels[:n], strict=True)]))


@dataclass
class Presented:
    """One presentation's answers as confusion matrices (row = true digit): all of them, and
    those the model was sure of (p >= the least confidence asked for)."""

    confusion: np.ndarray
    sure: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.confusion.trace() / self.confusion.sum())

    @property
    def answered(self) -> float:
        """The share of digits answered with a digit rather than 'not sure'."""
        return float(self.sure.sum() / self.confusion.sum())

    @property
    def sure_accuracy(self) -> float:
        """How often a sure answer is right (NaN when none was sure)."""
        return float(self.sure.trace() / self.sure.sum()) if self.sure.sum() else float("nan")


def presented_results(
    model,
    count: int,
    names: list[str] | None = None,
    preprocess: str = "mnist",
    data_root: str | None = None,
    least: float = 0.0,
) -> dict[str, Presented]:
    """The answers on `count` official test digits in each presentation (drawn on pads, written
    on photographed paper, cut out tight, scanned small, as stored; see core.presentations),
    read as a person's files are; `least` is the confidence below which an answer is 'not sure'."""
    from resnet_mnist.core import data as D
    from resnet_mnist.core import presentations

    mnist = D.load(data_root)
    if not 1 <= count <= len(mnist.test_labels):
        raise PredictError(f"--presented {count} must be in 1..{len(mnist.test_labels)}")
    images, labels = mnist.test_images[:count], mnist.test_labels[:count]
    try:
        chosen = presentations.by_name(names)
    except ValueError as exc:
        raise PredictError(str(exc)) from None
    results = {}
    for presentation in chosen:
        confusion = np.zeros((10, 10), dtype=np.int64)
        sure = np.zeros((10, 10), dtype=np.int64)
        files = presentations.rendered(presentation, images)
        for start in range(0, count, BATCH):
            digits = [load_digit(f, preprocess, presentation.name) for f in itertools.islice(files, BATCH)]
            answers = predict(model, np.stack(digits))
            truth = labels[start : start + len(digits)]
            predicted = np.array([a.digit for a in answers], dtype=np.int64)
            kept = np.array([a.sure(least) for a in answers], dtype=bool)
            np.add.at(confusion, (truth, predicted), 1)
            np.add.at(sure, (truth[kept], predicted[kept]), 1)
        results[presentation.name] = Presented(confusion, sure)
    return results
