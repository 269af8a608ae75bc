"""`resnet-mnist summary` and `verify-torchvision`: the model's size and cost, and its equivalence
with torchvision's ResNet18."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from resnet_mnist.cli.boundary import fail
from resnet_mnist.cli.common import console


def summary(
    use_residual: Annotated[bool, typer.Option(help="Residual or plain variant.")] = True,
    depth: Annotated[int, typer.Option(help="18 or 34, or 6n+2 (20, 32, 44, 56, 110).")] = 18,
) -> None:
    """Layer table, parameter count, MACs (thop) and FLOPs (torch) for one 1x1x32x32 input."""
    from resnet_mnist.config.space import family
    from resnet_mnist.core.complexity import format_table, measure
    from resnet_mnist.core.model import build_resnet

    try:
        model = build_resnet(depth, use_residual)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--depth") from None
    console.print(
        f"ResNet{depth} ({family(depth)}-style, "
        f"{'residual' if use_residual else 'plain'}), 1 channel, 10 classes"
    )
    console.print(format_table(measure(model)), highlight=False)


def verify_torchvision(
    weights: Annotated[
        Path | None,
        typer.Option(help="A torchvision resnet18 state_dict (.pth); random weights when omitted."),
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Images in the random batch.")] = 4,
    size: Annotated[int, typer.Option(min=32, help="Image side in pixels.")] = 224,
    tolerance: Annotated[float, typer.Option(help="Largest allowed difference.")] = 1e-5,
    seed: int = 0,
) -> None:
    """Copy torchvision's resnet18 weights into ours and check both give the same outputs."""
    from resnet_mnist.core.equivalence import torchvision_difference

    diff = torchvision_difference(weights, batch, size, seed)
    console.print(
        f"torchvision resnet18 vs resnet_mnist.ResNet18 on {batch}x3x{size}x{size}: "
        f"max |difference| = {diff:.3e} (tolerance {tolerance:.0e})"
    )
    if not diff <= tolerance:
        raise fail(f"outputs differ by {diff:.3e} > {tolerance:.0e}")
    console.print("[green]equivalent[/]")
