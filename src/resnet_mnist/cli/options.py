"""The CLI's hyper-parameter and placement options, made from the fields of `TrainConfig` and
`Placement` (one option per field).

Each option has the field's name (`--batch-size`; `--batch_size` works too, which is what
`mlflow run -P batch_size=…` passes), its type (int, float, a true/false value, or the field's
enum) and its help text; its default is "from the preset", so only what the user gives overrides.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, NewType, TypeVar

import typer

from resnet_mnist.config.placement import PLACEMENT_FIELDS, PLACEMENT_TYPES
from resnet_mnist.config.settings import FIELDS, TYPES, parse_bool

#: A boolean that takes a value (`--use-residual false`), unlike Typer's `--x/--no-x` flags, so
#: that `mlflow run -P use_residual=false` and the CLI read the same.
Bool = NewType("Bool", bool)
PANEL = "Hyper-parameters (each defaults to the preset's value)"
PLACE_PANEL = "Where it runs"
OPTION_FIELDS = FIELDS | PLACEMENT_FIELDS
OPTION_TYPES = TYPES | PLACEMENT_TYPES
F = TypeVar("F", bound=Callable[..., Any])


def flag(name: str) -> str:
    return OPTION_FIELDS[name].metadata.get("flag", "--" + name.replace("_", "-"))


def _option(name: str) -> inspect.Parameter:
    kind = OPTION_TYPES[name]
    extra: dict[str, Any] = {"parser": parse_bool, "metavar": "BOOLEAN"} if kind is bool else {}
    panel = PLACE_PANEL if name in PLACEMENT_FIELDS else PANEL
    info = typer.Option(
        flag(name),
        help=OPTION_FIELDS[name].metadata["help"],
        show_default=False,
        rich_help_panel=panel,
        **extra,
    )
    annotation = Annotated[(Bool if kind is bool else kind) | None, info]  # type: ignore[valid-type]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)


def config_option_names() -> list[str]:
    """The TrainConfig and Placement fields that are CLI options (all but the preset's name)."""
    return [name for name, f in OPTION_FIELDS.items() if f.metadata.get("cli", True)]


def split_options(given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The options a user gave, as (settings, placement); None (not given) dropped."""
    given = {k: v for k, v in given.items() if v is not None}
    return (
        {k: v for k, v in given.items() if k not in PLACEMENT_FIELDS},
        {k: v for k, v in given.items() if k in PLACEMENT_FIELDS},
    )


def with_config_options(command: F) -> F:
    """Give a command that takes `**settings` one typed option per TrainConfig and Placement
    field; it is called with every field as a keyword (None where the user gave nothing)."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
    command.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=own + [_option(name) for name in config_option_names()]
    )
    return command
