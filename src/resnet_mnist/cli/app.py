"""`resnet-mnist`: one command per user verb, each in the module of its group. Errors are messages
and exit codes, not tracebacks (see `boundary`); under `mlflow run` the commands decide which run
the project's run becomes."""

from __future__ import annotations

import inspect
import re
from typing import Annotated

import typer

from resnet_mnist.cli import compare, data, model, pad, predict, runs, study, train, tune
from resnet_mnist.cli.boundary import DEBUG_ENV, ErrorBoundary
from resnet_mnist.runtime import timeline
from resnet_mnist.runtime.collector import for_heavy_imports
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
app.command()(tune.tune)
app.command()(predict.predict)
app.command()(pad.pad)
app.command()(model.summary)
app.command("verify-torchvision")(model.verify_torchvision)
app.command()(runs.stale)
app.command()(runs.links)


@app.callback()
def main_options(
    debug: Annotated[
        bool, typer.Option(help=f"Show the traceback of an unexpected error (or set {DEBUG_ENV}=1).")
    ] = False,
) -> None:
    """MLflow-tracked ResNet18 with and without residual connections on MNIST."""


def _paragraphs(doc: str | None) -> str | None:
    """`doc` with the source's line wraps undone inside each paragraph: Typer's rich mode keeps
    single newlines after the first paragraph, so its wrapped lines would reach the terminal as
    mid-sentence breaks. Blank lines, list items (`- `, `* `), indented lines and paragraphs
    marked with click's `\\b` keep their lines (Typer reads the mark on the first paragraph only,
    and would print it on the others)."""
    if doc is None:
        return None
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    for i, p in enumerate(paragraphs):
        if not p.startswith("\b"):
            paragraphs[i] = re.sub(r"\n(?![ \t]|[-*] )", " ", p)
        elif i:
            paragraphs[i] = p.removeprefix("\b").lstrip("\n")
    return "\n\n".join(paragraphs)


def _unwrap_help(group: typer.Typer) -> None:
    """Every verb's (and the group callback's) help as paragraphs, for `--help` at any width."""
    for command in group.registered_commands:
        command.help = _paragraphs(command.help or inspect.getdoc(command.callback))
    callback = group.registered_callback
    if callback is not None and not isinstance(callback.help, str) and callback.callback:
        callback.help = _paragraphs(inspect.getdoc(callback.callback))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _unwrap_help(sub.typer_instance)


_unwrap_help(app)  # after the last verb and the callback are registered


def main() -> None:
    """The `resnet-mnist` command: its process ends as soon as the command has (`leave`)."""
    mark("startup")
    for_heavy_imports()
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
