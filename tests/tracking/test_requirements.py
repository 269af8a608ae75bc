"""A model's pins and Python version against this environment (tracking/requirements.py): the
warning `load_model` gives in place of MLflow's own check, and the check that stands in for
MLflow's while a model is logged."""

from __future__ import annotations

import logging
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from resnet_mnist.tracking.requirements import MLFLOW_CHECK, checked_here, mismatches

RUNNING = f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def model_dir(folder: Path, requirements: str, python: str | None = RUNNING) -> Path:
    """A model folder as MLflow writes one: MLmodel (with the pyfunc flavor's Python version)
    and requirements.txt."""
    folder.mkdir()
    flavor = f"    python_version: {python}\n" if python else ""
    (folder / "MLmodel").write_text(f"flavors:\n  python_function:\n    loader_module: x\n{flavor}")
    (folder / "requirements.txt").write_text(requirements)
    return folder


def echo():
    """A pyfunc model with no weights: what is checked here is its requirements, not its answers."""
    import mlflow

    class Echo(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input):
            return model_input

    return Echo()


def test_a_model_logged_here_matches(tmp_path: Path) -> None:
    pins = "".join(f"{name}=={metadata.version(name)}\n" for name in ("torch", "mlflow", "numpy"))
    assert mismatches(model_dir(tmp_path / "m", pins)) == []


def test_each_difference_is_named_once(tmp_path: Path) -> None:
    numpy = metadata.version("numpy")
    folder = model_dir(
        tmp_path / "m",
        "torch==0.0.1\n"  # another version
        f"numpy=={numpy}  # a comment\n"  # satisfied
        "no-such-distribution-here==1.0\n"  # not installed
        "-r other.txt\n"  # not a requirement: not judged
        'scipy==0.0.1; python_version < "3"\n'  # not for this Python
        f"mlflow>={metadata.version('mlflow')}\n",  # satisfied by a range
        python="3.1.4",
    )
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert mismatches(folder) == [
        f"torch (installed {metadata.version('torch')}; the model requires torch==0.0.1)",
        "no-such-distribution-here (not installed; the model requires no-such-distribution-here==1.0)",
        f"Python (running {minor}; the model was logged with 3.1.4)",
    ]


def test_another_micro_version_of_python_or_none_recorded_is_no_difference(tmp_path: Path) -> None:
    micro = f"{sys.version_info.major}.{sys.version_info.minor}.0"
    assert mismatches(model_dir(tmp_path / "a", "", python=micro)) == []
    assert mismatches(model_dir(tmp_path / "b", "", python=None)) == []
    assert mismatches(tmp_path) == []  # neither file: nothing to judge


def test_loading_a_model_warns_of_its_differences(
    store: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`load_model` skips MLflow's slow check and gives the same warning from its own."""
    import mlflow

    from resnet_mnist.inference.predict import load_model

    mlflow.set_experiment("pins")
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="echo",
            python_model=echo(),
            input_example=np.zeros((1, 2), dtype=np.float32),
            pip_requirements=["numpy==0.0.1", f"mlflow=={metadata.version('mlflow')}"],
        )
    with caplog.at_level(logging.WARNING):
        model = load_model(info.model_uri, allow_untrusted=True)
    assert model is not None
    warned = [r.getMessage() for r in caplog.records if r.name == "resnet_mnist.inference.predict"]
    assert warned == [
        f"model {info.model_uri}: numpy (installed {metadata.version('numpy')}; "
        "the model requires numpy==0.0.1)"
    ]


def test_mlflow_still_checks_requirements_where_the_logger_stands_in() -> None:
    """If an MLflow release moves its check, `checked_here` stands in for nothing (its own check
    runs, a second slower): this says so."""
    from mlflow.utils import environment

    assert callable(getattr(environment, MLFLOW_CHECK, None))


def test_logging_a_model_warns_of_unmet_pins_without_mapping_every_distribution(
    store: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import mlflow
    from mlflow.utils import requirements_utils

    scans = []
    scan = requirements_utils.importlib_metadata.packages_distributions
    monkeypatch.setattr(
        requirements_utils.importlib_metadata, "packages_distributions", lambda: scans.append(1) or scan()
    )

    def log_echo() -> None:
        monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # nothing mapped yet
        mlflow.pyfunc.log_model(name="echo", python_model=echo(), pip_requirements=["numpy==0.0.1"])

    mlflow.set_experiment("pins")
    with mlflow.start_run(), caplog.at_level(logging.WARNING):
        with checked_here():
            log_echo()
        assert scans == []
        warned = [r.getMessage() for r in caplog.records if r.name == "resnet_mnist.tracking.requirements"]
        assert warned == [
            "the model's requirements are not this environment's: numpy (installed "
            f"{metadata.version('numpy')}; the model requires numpy==0.0.1)"
        ]
        log_echo()  # outside the block, MLflow's own check maps every distribution again
        assert scans == [1]
