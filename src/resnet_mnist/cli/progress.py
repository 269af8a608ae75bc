"""How training looks on the console: a rich progress bar on a terminal, the book's log lines
otherwise (pipes, CI, `mlflow run`)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from resnet_mnist.core.trainer import Callback, Result, Trainer


class RichProgress(Callback):
    """Epoch, step, loss, dev accuracy and images/s in one live bar."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: TaskID | None = None
        self.epochs = 0
        self.dev = "-"

    def on_start(self, trainer: Trainer, total_steps: int) -> None:
        self.epochs = trainer.config.epochs
        self.task = self.progress.add_task(trainer.config.architecture, total=total_steps, info="")
        self.progress.start()

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        info = (
            f"epoch {epoch + 1}/{self.epochs}  loss {loss:.4f}  dev acc {self.dev}  {images_per_s:,.0f} img/s"
        )
        if self.task is not None:
            self.progress.update(self.task, completed=step + 1, info=info)

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self.dev = f"{dev_accuracy:.4f}"

    def on_end(self, result: Result) -> None:
        self.progress.stop()


class PlainLog(Callback):
    """The book's lines: `[Train] epoch: 0/5, step: 0/80, loss: 2.30`, `[Evaluate] dev score: ...`."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self.epochs = self.total = 0
        self.best = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_start(self, trainer: Trainer, total_steps: int) -> None:
        self.epochs, self.total = trainer.config.epochs, total_steps

    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None:
        self._print(
            f"[Train] epoch: {epoch}/{self.epochs}, step: {step}/{self.total}, "
            f"loss: {loss:.5f}, {images_per_s:,.0f} images/s"
        )

    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None:
        self._print(f"[Evaluate] dev score: {dev_accuracy:.5f}, dev loss: {dev_loss:.5f}")

    def on_best(self, step: int, dev_accuracy: float) -> None:
        self._print(
            f"[Evaluate] best accuracy performance has been updated: {self.best:.5f} --> {dev_accuracy:.5f}"
        )
        self.best = dev_accuracy

    def on_end(self, result: Result) -> None:
        self._print(
            f"[Test] best checkpoint (step {result.best_step}): "
            f"accuracy {result.test_accuracy:.5f}, loss {result.test_loss:.5f}"
        )


def for_console(console: Console) -> Callback:
    return RichProgress(console) if console.is_terminal else PlainLog()
