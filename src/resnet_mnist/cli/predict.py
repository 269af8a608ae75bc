"""`resnet-mnist predict`: a person's digit images classified by a model loaded by URI."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_mnist.cli.common import RootOption, console
from resnet_mnist.tracking.names import CHAMPION_URI


def predict(
    images: Annotated[list[Path] | None, typer.Argument(help="PNG/JPG digit images.")] = None,
    model_uri: Annotated[
        str, typer.Option(help="Any MLflow model URI: models:/NAME@ALIAS, runs:/ID/model, …")
    ] = CHAMPION_URI,
    mnist_test: Annotated[
        int | None, typer.Option(help="Also score the first N official test images.")
    ] = None,
    allow_untrusted_model: Annotated[
        bool,
        typer.Option(
            help="Load a model that is not this project's pt2 PyTorch model (it may carry code or "
            "a pickle that runs when loaded)."
        ),
    ] = False,
    data_root: RootOption = None,
) -> None:
    """Classify digit images with a model loaded by URI (the champion by default)."""
    import numpy as np

    from resnet_mnist.inference import predict as P
    from resnet_mnist.tracking.store import check_store

    if not images and mnist_test is None:
        raise typer.BadParameter("give image files and/or --mnist-test N")
    check_store()
    paths = images or []
    digits = np.stack([P.load_digit(p) for p in paths]) if paths else None
    model = P.load_model(model_uri, allow_untrusted_model)
    if digits is not None:
        for path, pred in zip(paths, P.predict(model, digits), strict=True):
            console.print(f"{path}: {pred.digit} (p={pred.probability:.3f})", highlight=False)
    if mnist_test is not None:
        acc = P.mnist_test_accuracy(model, mnist_test, str(data_root) if data_root else None)
        console.print(f"accuracy on the first {mnist_test} MNIST test images: {acc:.4f}")
