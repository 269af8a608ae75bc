"""The process boundary: what escapes a command becomes one line and an exit code (Ctrl-C and
SIGTERM become stop requests in `signals`).

The project's own errors (`ProjectError`, from any layer) are expected: their message is the
whole story, and their `exit_code` says what kind of failure it was (2 for invalid settings, 75
when the tracking server went away and the run can continue later, 1 otherwise).
Anything else is a bug or an environment problem: one line, and the traceback with `--debug` or
RESNET_MNIST_DEBUG=1.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

from resnet_mnist.runtime.errors import ProjectError, first_line

err = Console(stderr=True, soft_wrap=True)
DEBUG_ENV = "RESNET_MNIST_DEBUG"


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def disk_full(exc: OSError) -> str:
    """Which file could not be written, and what happened to the run."""
    where = exc.filename2 or exc.filename
    return (
        f"no space left on the device while writing {where or 'a file'} ({exc.strerror}); "
        "free some space and rerun (any run in progress was ended FAILED)"
    )


class ErrorBoundary(TyperGroup):
    """Runs a command and maps what escapes it to one line on stderr and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:  # type: ignore[override]  # typer's own Context
        debug = bool(ctx.params.get("debug")) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):  # typer's own (its usage errors too)
            raise
        except KeyboardInterrupt as exc:
            from resnet_mnist.runtime.signals import ignore_signals_at_exit
            from resnet_mnist.tracking.lifecycle import RunInterrupted

            # What the run needed is recorded; what is left is one line and the exit (without
            # teardown). A Ctrl-C more could only cut that line off, so the rest of a burst is
            # ignored from here on.
            ignore_signals_at_exit()
            from resnet_mnist.core.distributed import reports

            if not reports():
                # A rank stopped with its job: rank 0 tells what happened and decides the exit
                # code. This rank ends as done (0), not failed: torch's agent ends every rank at
                # the first failure, and a 130 here could reach it while rank 0 still keeps the
                # run's state for a resume (seen under load: the server lost, exit 130, not 75).
                raise typer.Exit(0) from None
            if isinstance(exc, RunInterrupted):
                hint = (
                    f"; resume with `resnet-mnist train --resume {exc.run_id}`"
                    if exc.step is not None
                    else ""
                )
                raise fail(f"interrupted; run {exc.run_id} was ended KILLED{hint}", 130) from None
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            # Whoever read stdout has gone (`| head`): stop quietly, as a shell tool does, and
            # point stdout at /dev/null so that the interpreter's own final flush cannot fail.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(128 + signal.SIGPIPE) from None
        except Exception as exc:
            if isinstance(exc, ProjectError):
                raise fail(str(exc), exc.exit_code) from None
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise fail(disk_full(exc)) from None
            if debug:
                raise
            first = first_line(exc, 500) if str(exc).strip() else ""
            raise fail(
                f"unexpected {type(exc).__name__}"
                + (f": {first}" if first else "")
                + f" (rerun with --debug or {DEBUG_ENV}=1 for the traceback)"
            ) from None
