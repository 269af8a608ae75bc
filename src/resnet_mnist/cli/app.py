"""`resnet-mnist`: one command per user verb, each in the module of its group. Errors are messages
and exit codes, not tracebacks (see `boundary`); under `mlflow run` the commands decide which run
the project's run becomes."""

from __future__ import annotations

from typing import Annotated

import typer

from resnet_mnist.cli import compare, data, model, pad, predict, runs, study, train
from resnet_mnist.cli.boundary import DEBUG_ENV, ErrorBoundary
from resnet_mnist.runtime import timeline
from resnet_mnist.runtime.signals import ignore_signals_at_exit, leave, own_process
from resnet_mnist.runtime.timeline import mark

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=ErrorBoundary,
    # `mlflow run -P batch_size=8` passes `--batch_size 8`: accept both spellings.
    context_settings={"token_normalize_func": lambda t: t.replace("_", "-")},
)
data_app = typer.Typer(help="Get and check the MNIST IDX files.", no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("fetch")(data.fetch)
data_app.command("samples")(data.samples)
data_app.command("presented")(data.presented)
app.command()(train.train)
app.command()(compare.compare)
app.command()(study.study)
app.command()(predict.predict)
app.command()(pad.pad)
app.command()(model.summary)
app.command("verify-torchvision")(model.verify_torchvision)
app.command()(runs.stale)
app.command()(runs.links)


@app.callback()
@app.callback()
def main_options(
    debug: Annotated[
        bool, typer.Option(help=f"Show the traceback of an unexpected error (or set {DEBUG_ENV}=1).")
    ] = False,
) -> None:
    """MLflow-tracked ResNet18 with and without residual connections on MNIST."""


def main() -> None:
    """The `resnet-mnist` command: its process ends as soon as the command has (`leave`)."""
    mark("startup")
    own_process()
    code: object = 0
    try:
        app(prog_name="resnet-mnist")
    except SystemExit as exc:
        code = exc.code
    finally:
        ignore_signals_at_exit()
        mark("summary")
        timeline.write()
    leave(code)


if __name__ == "__main__":
    main()
