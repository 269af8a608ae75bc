"""The process boundary: what escapes a command becomes one line and an exit code (Ctrl-C and
SIGTERM become stop requests in `signals`).

The project's own errors are expected: their message is the whole story (exit 2 for invalid
settings, 75 when the tracking server went away and the run can continue later, 1 otherwise).
Anything else is a bug or an environment problem: one line, and the traceback with `--debug` or
RESNET_MNIST_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

from resnet_mnist import data as D
from resnet_mnist.config import ConfigError
from resnet_mnist.errors import first_line
from resnet_mnist.store import TrackingUnavailable

err = Console(stderr=True, soft_wrap=True)
DEBUG_ENV = "RESNET_MNIST_DEBUG"


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _project_errors() -> dict[type[BaseException], int]:
    """The project's own errors and their exit codes (2: invalid settings, 75: try again later,
    1: anything else)."""
    from resnet_mnist.compare import CompareError
    from resnet_mnist.device import DeviceUnavailable
    from resnet_mnist.offline import EXIT_CODE, TrackingLost
    from resnet_mnist.predict import PredictError
    from resnet_mnist.runner import ResumeError
    from resnet_mnist.train import CheckpointError, NonFiniteLossError

    return {ConfigError: 2, D.DataError: 1, TrackingUnavailable: 1, ResumeError: 1,
            CompareError: 1, PredictError: 1, DeviceUnavailable: 1, NonFiniteLossError: 1,
            CheckpointError: 1, TrackingLost: EXIT_CODE}


def disk_full(exc: OSError) -> str:
    """Which file could not be written, and what happened to the run."""
    where = exc.filename2 or exc.filename
    return (f"no space left on the device while writing {where or 'a file'} ({exc.strerror}); "
            "free some space and rerun (any run in progress was ended FAILED)")


class ErrorBoundary(TyperGroup):
    """Runs a command and maps what escapes it to one line on stderr and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException, click.exceptions.Exit,
                click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            from resnet_mnist.runs import RunInterrupted
            from resnet_mnist.signals import exit_quietly_on_signals

            exit_quietly_on_signals()  # more Ctrl-C while this is reported: exit 130, quietly
            from resnet_mnist.distributed import reports

            if not reports():  # a rank stopped with its job: rank 0 tells what happened
                raise typer.Exit(130) from None
            if isinstance(exc, RunInterrupted):
                hint = (f"; resume with `resnet-mnist train --resume {exc.run_id}`"
                        if exc.step is not None else "")
                raise fail(f"interrupted; run {exc.run_id} was ended KILLED{hint}", 130) from None
            raise fail("interrupted", 130) from None
        except Exception as exc:
            code = next((c for kind, c in _project_errors().items() if isinstance(exc, kind)), None)
            if code is not None:
                raise fail(str(exc), code) from None
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise fail(disk_full(exc)) from None
            if debug:
                raise
            first = first_line(exc, 500) if str(exc).strip() else ""
            raise fail(f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")
                       + f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)") from None
