"""Classify real digit images with a logged or registered model, loaded by URI through MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL_URI = "models:/resnet18-mnist@champion"


class PredictError(RuntimeError):
    """An image or model that cannot be used; the message names it."""


def load_digit(path: Path) -> np.ndarray:
    """Any PNG/JPG -> 28x28 uint8, white digit on black as in MNIST.

    Colour is dropped; an image whose border is brighter than its centre (dark ink on light paper)
    is inverted; the whole image is resized to 28x28.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            gray = img.convert("L")
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise PredictError(f"{path}: not an image PIL can read ({exc})") from None
    pixels = np.asarray(gray.resize((28, 28), Image.Resampling.BILINEAR), dtype=np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels)


def load_model(uri: str):
    """The model as an MLflow pyfunc; a missing URI becomes one clear error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PredictError(f"cannot load model {uri!r}: {first}") from None


@dataclass
class Prediction:
    digit: int
    probability: float
    probabilities: np.ndarray


def predict(model, digits: np.ndarray) -> list[Prediction]:
    """Digits (N, 28, 28) uint8 -> one Prediction each."""
    probs = np.asarray(model.predict(np.array(digits, dtype=np.uint8)))
    return [Prediction(int(p.argmax()), float(p.max()), p) for p in probs]


def mnist_test_accuracy(model, n: int, data_root: str | None = None) -> float:
    """Accuracy on the first `n` official test images, fed raw as the model expects."""
    from resnet_mnist import data as D

    mnist = D.load(data_root)
    if not 1 <= n <= len(mnist.test_labels):
        raise PredictError(f"--mnist-test {n} must be in 1..{len(mnist.test_labels)}")
    preds = predict(model, mnist.test_images[:n])
    return float(np.mean([p.digit == y for p, y in zip(preds, mnist.test_labels[:n], strict=True)]))
