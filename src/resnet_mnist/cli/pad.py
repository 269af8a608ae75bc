"""`resnet-mnist pad`: a drawing pad in the browser, answered by a model loaded by URI."""

from __future__ import annotations

from typing import Annotated

import typer

from resnet_mnist.cli.common import console
from resnet_mnist.tracking.names import CHAMPION_URI


def pad(
    model_uri: Annotated[
        str, typer.Option(help="Any MLflow model URI: models:/NAME@ALIAS, runs:/ID/model, …")
    ] = CHAMPION_URI,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback unless you mean otherwise).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 5002,
    min_confidence: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Say 'not sure' (with the likeliest digits) below this calibrated probability.",
        ),
    ] = 0.5,
    allow_untrusted_model: Annotated[
        bool,
        typer.Option(help="Load a model that is not this project's pt2 PyTorch model (it may run code)."),
    ] = False,
) -> None:
    """Serve a page where you draw a digit (or drop a photo) and see the model's answer."""
    from resnet_mnist.inference import pad as Pad
    from resnet_mnist.inference import predict as P
    from resnet_mnist.tracking.store import check_store

    check_store()
    model = P.load_model(model_uri, allow_untrusted_model)
    console.print(f"the pad: http://{host}:{port}/ (model {model_uri}; Ctrl-C stops it)", highlight=False)
    Pad.serve(model, model_uri, host, port, min_confidence)
