"""`python -m benchmarks` (what `make bench` runs from the checkout): measured figures, never
asserted, written to bench.json and bench.md."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from benchmarks import bench as B
from resnet_mnist.config.placement import Device
from resnet_mnist.core.device import resolve_device

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)
app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Where bench.json and bench.md go.")] = Path("reports/bench"),
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per measurement.")] = 3,
    quick: Annotated[
        bool,
        typer.Option(
            help="Small sizes (512 / 100 / 100 images), one epoch, the residual variant only: a smoke "
            "test of the bench."
        ),
    ] = False,
    time_to_accuracy: Annotated[
        bool, typer.Option(help="Also train the full preset to 99.0/99.5 % (minutes on GPU, hours on CPU).")
    ] = False,
    device: Annotated[Device, typer.Option(help="auto picks CUDA when available.")] = Device.auto,
    study: Annotated[
        str | None, typer.Option(help="Also time a whole study (cpu: under 30 minutes here; tiny: a minute).")
    ] = None,
    study_workers: Annotated[int, typer.Option(min=1, help="Workers for --study.")] = 2,
    data_root: Annotated[Path | None, typer.Option("--root", help="Data root (ROOT/MNIST/raw).")] = None,
) -> None:
    """Measure throughput, the book's experiment against a book-style loop and the Lightning peer,
    the train process's fixed cost, and tracking overhead."""
    B.run(
        out,
        resolve_device(device),
        repeats,
        quick,
        time_to_accuracy,
        str(data_root) if data_root else "",
        log=lambda line: err.print(line, highlight=False),
        study=study,
        study_workers=study_workers,
    )
    console.print((out / "bench.md").read_text(), markup=False, highlight=False)


if __name__ == "__main__":
    app()
