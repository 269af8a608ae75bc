"""What the verbs share: the console they print to, the data-root option, the parsing of comma
lists of seeds and numbers, and a command line minus some of its options."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


RootOption = Annotated[
    Path | None,
    typer.Option("--root", help="Data root (files in ROOT/MNIST/raw); default $RESNET_MNIST_DATA or ./data."),
]


def parse_seeds(value: str | None) -> list[int] | None:
    """`5` means seeds 0..4; `0,1,2` lists them; nothing keeps the preset's seed."""
    if value is None or not value.strip():
        return None
    try:
        if "," not in value:
            count = int(value)
            if count < 1:
                raise ValueError
            return list(range(count))
        seeds = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"--seeds takes a count >= 1 or a list like 0,1,2; got {value!r}", param_hint="--seeds"
        ) from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise typer.BadParameter(f"--seeds {value!r} repeats a seed", param_hint="--seeds")
    return seeds


def parse_numbers(value: str | None, kind: type, option: str) -> list | None:
    """`20,56` -> [20, 56]; nothing keeps the study file's list."""
    if value is None or not value.strip():
        return None
    try:
        return [kind(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"takes a comma list of numbers, got {value!r}", param_hint=option) from None


def drop_options(argv: list[str], with_value: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> list[str]:
    """The command line minus some options (`--name VALUE`, `--name=VALUE`, or a bare flag), for
    the processes a command starts with its own arguments (`train --nproc`'s ranks)."""
    out, skip = [], False
    for arg in argv:
        name = arg.split("=", 1)[0].replace("_", "-")
        if skip:
            skip = False
        elif name in with_value:
            skip = "=" not in arg
        elif name not in flags:
            out.append(arg)
    return out
