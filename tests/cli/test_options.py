"""The CLI's options follow from TrainConfig and Placement: every field is an option of its type,
given values reach the run request's settings or placement, bad ones stop before anything runs
(in-process, fast)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import pytest
from typer.testing import CliRunner

from resnet_mnist.cli.app import app
from resnet_mnist.cli.options import OPTION_FIELDS, OPTION_TYPES, config_option_names, flag
from resnet_mnist.config.placement import PLACEMENT_FIELDS
from resnet_mnist.config.settings import FIELDS
from resnet_mnist.tracking import runner
from resnet_mnist.tracking.request import RunRequest

cli = CliRunner()


def flat(text: str) -> str:
    return " ".join(text.replace("│", " ").split())


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[RunRequest]:
    """Replace training by a recorder of the run request it would have trained."""
    seen: list[RunRequest] = []

    def fake_train(request: RunRequest, *args: Any, **kwargs: Any) -> None:
        seen.append(request)
        raise SystemExit(0)

    monkeypatch.setattr(runner, "train", fake_train)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    return seen


def other_value(name: str) -> tuple[str, Any]:
    """A valid value for field `name` that differs from its default: (as typed, as parsed)."""
    kind, default = OPTION_TYPES[name], OPTION_FIELDS[name].default
    if kind is bool:
        return str(not default).lower(), not default
    if name == "depth":
        return "20", 20
    if name == "warmup_steps":  # fewer than the training's steps (7 of batch 7 over 7 images)
        return "3", 3
    if kind is int:
        return "7", 7
    if kind is float:
        return "0.5", 0.5
    if isinstance(kind, type) and issubclass(kind, StrEnum):
        member = [m for m in kind if m != default][-1]
        return member.value, member
    return "elsewhere", "elsewhere"


def test_every_field_but_the_preset_name_is_an_option() -> None:
    assert set(config_option_names()) == (set(FIELDS) | set(PLACEMENT_FIELDS)) - {"preset"}
    out = cli.invoke(app, ["train", "--help"], terminal_width=200)
    assert out.exit_code == 0
    for name in config_option_names():
        assert flag(name) in out.output, name
        assert OPTION_FIELDS[name].metadata["help"].split()[0] in out.output, name


@pytest.mark.parametrize("spelling", ["dash", "underscore"])
def test_every_option_reaches_the_request(captured: list[RunRequest], spelling: str) -> None:
    args = ["train", "--preset", "smoke"]
    for name in config_option_names():
        option = flag(name) if spelling == "dash" else f"--{name}"
        if name == "data_root" and spelling == "underscore":
            option = "--root"
        args += [option, other_value(name)[0]]
    out = cli.invoke(app, args)
    assert out.exit_code == 0, out.output
    (request,) = captured
    for name in config_option_names():
        where = request.placement if name in PLACEMENT_FIELDS else request.config
        assert getattr(where, name) == other_value(name)[1], name
    assert request.config.preset == "smoke"


def test_options_not_given_keep_the_preset(captured: list[RunRequest]) -> None:
    out = cli.invoke(app, ["train", "--preset", "seed", "--use-residual", "false"])
    assert out.exit_code == 0, out.output
    config = captured[0].config
    assert (config.lr, config.batch_size, config.epochs, config.use_residual) == (0.005, 64, 5, False)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--use-residual", "maybe"], "'maybe' is not true or false"),
        (["--lr", "abc"], "Invalid value for '--lr'"),
        (["--schedule", "cosine"], "Invalid value for '--schedule'"),
        (["--lr", "0"], "lr=0.0 must be a finite number > 0"),
        (["--nesterov", "true"], "nesterov needs momentum > 0"),
        (["--batch_size", "0"], "batch_size=0 must be >= 1"),
        (["--learning-rate", "0.1"], "No such option: --learning-rate"),
        (["--preset", "nope"], "unknown preset 'nope'; known presets:"),
        (["--resume", "abc", "--lr", "0.1"], "drop --lr"),
        (["--resume", "abc", "--nproc", "2"], "--resume continues in one process"),
        (["--sync-bn", "true", "--device", "cpu"], "sync_bn needs CUDA"),
    ],
)
def test_bad_options_exit_2_before_training(
    captured: list[RunRequest], args: list[str], message: str
) -> None:
    out = cli.invoke(app, ["train", "--preset", "smoke", *args])
    assert out.exit_code == 2, out.output
    assert message in flat(out.output)
    assert captured == []


def test_mlproject_parameters_are_config_fields_passed_as_their_options() -> None:
    """MLproject declares only settings with a real default; each is a TrainConfig field and the
    command passes it to the option of that field (the rest pass as `-P name=value`)."""
    import yaml

    from tests.conftest import REPO

    main = yaml.safe_load((REPO / "MLproject").read_text())["entry_points"]["main"]
    assert set(main["parameters"]) <= set(FIELDS)
    for name, spec in main["parameters"].items():
        assert f"{flag(name) if name != 'preset' else '--preset'} {{{name}}}" in main["command"]
        assert spec["default"] not in ("", "preset", None), f"{name} has a placeholder default"
