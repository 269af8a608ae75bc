"""Classify real digit images with a logged or registered model, loaded by URI through MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resnet_mnist.runtime.env import overridden
from resnet_mnist.runtime.errors import ProjectError


class PredictError(ProjectError, RuntimeError):
    """An image or model that cannot be used; the message names it."""


def load_digit(path: Path) -> np.ndarray:
    """Any PNG/JPG -> 28x28 uint8, white digit on black as in MNIST.

    The EXIF orientation is applied; transparency is flattened onto the background that keeps the
    ink visible; 16-bit greyscale is scaled (not clipped) to 0-255; colour is dropped; an image
    whose border is brighter than its centre (dark ink on light paper) is inverted; the whole
    image is resized to 28x28. An image too large to be a digit (PIL's decompression-bomb guard)
    is refused.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            gray = _grey(ImageOps.exif_transpose(img))
    except FileNotFoundError:
        raise PredictError(f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:
        raise PredictError(f"{path}: refused, too many pixels for a digit image ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise PredictError(f"{path}: not an image PIL can read ({exc})") from None
    pixels = np.asarray(gray.resize((28, 28), Image.Resampling.BILINEAR), dtype=np.uint8)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127:
        pixels = 255 - pixels
    return np.ascontiguousarray(pixels)


def _grey(img):
    """The image as 8-bit greyscale ("L"), keeping what a person sees as the digit."""
    from PIL import Image

    if img.mode.startswith("I"):  # 16-bit (or 32-bit integer) greyscale: scale, do not clip
        values = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or values.max() > 255 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:] / 255.0
        ink = rgba[..., :3].mean(-1, keepdims=True)
        # The ink is what is opaque: flatten onto the opposite background so that it stays visible.
        weight = max(float(alpha.sum()), 1e-9)
        background = 255.0 if float((ink * alpha).sum()) / weight < 128 else 0.0
        flat = ink * alpha + background * (1 - alpha)
        return Image.fromarray(np.clip(flat[..., 0] + 0.5, 0, 255).astype(np.uint8))
    return img.convert("L")


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
        with overridden({PICKLE_SWITCH: "true" if allow_untrusted else "false"}):
            return mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as exc:
        if not allow_untrusted and "pickle" in str(exc).lower():
            raise PredictError(
                f"refused model {uri!r}: its weights are a pickle, not pt2 as this project logs "
                "them; loading it could run code it carries. Pass --allow-untrusted-model to "
                "load it anyway."
            ) from None
        raise PredictError(f"cannot load model {uri!r}: {first_line(exc)}") from None


PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


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


def predict(model, digits: np.ndarray) -> list[Prediction]:
    """Digits (N, 28, 28) uint8 -> one Prediction each."""
    probs = np.asarray(model.predict(np.array(digits, dtype=np.uint8)))
    return [Prediction(int(p.argmax()), float(p.max()), p) for p in probs]


def mnist_test_accuracy(model, n: int, data_root: str | None = None) -> float:
    """Accuracy on the first `n` official test images, fed raw as the model expects."""
    from resnet_mnist.core import data as D

    mnist = D.load(data_root)
    if not 1 <= n <= len(mnist.test_labels):
        raise PredictError(f"--mnist-test {n} must be in 1..{len(mnist.test_labels)}")
    preds = predict(model, mnist.test_images[:n])
    return float(np.mean([p.digit == y for p, y in zip(preds, mnist.test_labels[:n], strict=True)]))
