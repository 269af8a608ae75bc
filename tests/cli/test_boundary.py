"""The process boundary: expected errors are one line and an exit code, unexpected ones one line
and a hint (the traceback with --debug), and signals become a stop request (in-process, fast)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from resnet_mnist.cli.app import app
from resnet_mnist.cli.boundary import DEBUG_ENV
from resnet_mnist.config.settings import ConfigError
from resnet_mnist.core import complexity
from resnet_mnist.core import data as D

cli = CliRunner()


def broken(exc: BaseException):
    def measure(*args, **kwargs):
        raise exc

    return measure


@pytest.mark.parametrize(
    "exc,code,line",
    [
        (ConfigError("lr=0 must be > 0"), 2, "error: lr=0 must be > 0"),
        (D.DataError("train-images-idx3-ubyte: missing"), 1, "error: train-images-idx3-ubyte: missing"),
        (
            ZeroDivisionError("division by zero"),
            1,
            f"error: unexpected ZeroDivisionError: division by zero (rerun with --debug or {DEBUG_ENV}=1",
        ),
        (KeyboardInterrupt(), 130, "error: interrupted"),
    ],
)
def test_errors_become_one_line_and_an_exit_code(
    monkeypatch: pytest.MonkeyPatch, exc: BaseException, code: int, line: str
) -> None:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    monkeypatch.setattr(complexity, "measure", broken(exc))
    out = cli.invoke(app, ["summary"], terminal_width=200)
    assert out.exit_code == code
    assert line in out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) <= 2


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_unexpected_error(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    monkeypatch.setattr(complexity, "measure", broken(ZeroDivisionError("division by zero")))
    if how == "env":
        monkeypatch.setenv(DEBUG_ENV, "1")
    out = cli.invoke(app, (["--debug"] if how == "flag" else []) + ["summary"])
    assert isinstance(out.exception, ZeroDivisionError)


def test_expected_failures_of_the_store_and_compare_are_one_line(
    store: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resnet_mnist.tracking.experiments import experiment_id

    # before anything was trained (in a process of its own, this was the seeded store's first call)
    out = cli.invoke(app, ["compare", "--preset", "smoke"], terminal_width=300)
    assert out.exit_code == 1 and "experiment 'resnet18-mnist' does not exist: train first" in out.output
    experiment_id("resnet18-mnist")
    cases = [
        (["compare", "--runs", "nope1,nope2"], "error: no run 'nope1' in"),
        (
            ["compare", "--filter", "params.lr ==== 3"],
            "error: --filter 'params.lr ==== 3' is not an MLflow search string MLflow accepts",
        ),
        (
            ["compare", "--tuned", "--preset", "smoke"],
            "error: no complete tune search of preset 'smoke' for the plain network",
        ),
    ]
    for args, line in cases:
        out = cli.invoke(app, args, terminal_width=300)
        assert out.exit_code == 1, out.output
        assert line in out.output and "Traceback" not in out.output
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"this is not a database" * 100)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{damaged}")
    for args in (["compare"], ["links"], ["predict", "--mnist-test", "5"]):
        out = cli.invoke(app, args, terminal_width=300)
        assert out.exit_code == 1, out.output
        assert f"error: the tracking store sqlite:///{damaged} cannot be opened" in out.output
