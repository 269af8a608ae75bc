"""`--help` reads as paragraphs at 80 columns: every verb (found in the Typer app, so a new one is
covered) and the top level, rendered in-process as a user's terminal shows them."""

from __future__ import annotations

import pytest
import typer
from typer.core import TyperGroup
from typer.testing import CliRunner

from resnet_mnist.cli.app import app

WIDTH = 80
# Rich pads the description one column each side: a line holds at most WIDTH - 2 characters of
# text. Rich wraps greedily, so the next line's first word never fits on a line it wrapped; the
# margin keeps the check to breaks that leave clearly unused width.
MARGIN = 4


def verbs() -> list[tuple[str, ...]]:
    """Every command path of the app: () for the top level, then each verb and group member."""
    found: list[tuple[str, ...]] = []

    def walk(command: object, path: tuple[str, ...]) -> None:
        found.append(path)
        if isinstance(command, TyperGroup):
            for name, sub in command.commands.items():
                walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


def description(output: str) -> list[str]:
    """The lines between the usage line and the first panel (options, arguments, commands)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
    end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
    return [line.rstrip() for line in lines[start:end]]


def source_breaks(lines: list[str]) -> list[str]:
    """Line pairs of one paragraph where the next line's first word would have fit on the line:
    a break the renderer did not choose, i.e. the docstring's own wrapping. A list item (`- `,
    `* `) or an indented line may start a line of its own."""
    found = []
    for line, following in zip(lines, lines[1:], strict=False):
        text = following.strip()
        if not line.strip() or not text or text.startswith(("- ", "* ")):
            continue
        if len(following) - len(following.lstrip()) > len(line) - len(line.lstrip()):
            continue
        if len(line) + 1 + len(text.split()[0]) <= WIDTH - 1 - MARGIN:
            found.append(f"{line!r} / {following!r}")
    return found


@pytest.mark.parametrize("path", verbs(), ids=lambda p: " ".join(p) or "resnet-mnist")
def test_help_is_paragraphs_at_80_columns(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(
        app,
        [*path, "--help"],
        prog_name="resnet-mnist",
        env={"COLUMNS": str(WIDTH)},
        terminal_width=WIDTH,
    )
    assert result.exit_code == 0, result.output
    lines = description(result.output)
    assert any(line.strip() for line in lines), f"no description:\n{result.output}"
    assert all(len(line) <= WIDTH for line in result.output.splitlines())
    assert not source_breaks(lines), "\n".join(
        ["mid-sentence breaks from the source:", *source_breaks(lines), result.output]
    )


def test_every_verb_is_covered() -> None:
    names = {" ".join(path) for path in verbs()}
    assert {"", "train", "compare", "study", "predict", "pad", "summary"} <= names
    assert {"verify-torchvision", "stale", "links", "data fetch"} <= names
