"""Whether this environment runs a model as it was logged: its pinned packages and its Python
version, checked when a model is logged and when one is loaded.

MLflow makes this check itself on both occasions, but to find each package it first maps every
installed distribution to its modules (`importlib_metadata.packages_distributions`, which reads
every RECORD file: 1.0 s on its own here), for three pins. The pins name their distributions, so
`importlib.metadata.version` answers each in microseconds: a `train` process ends 0.5 s sooner, a
`predict` 0.85 s (docs/performance.md).
The loader asks MLflow to skip its check (`suppress_warnings`) and makes this one; the logger,
for which MLflow has no such switch, has this check stand in for MLflow's while it logs
(`checked_here`). Either way the same mismatches are warned of.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

REQUIREMENTS = "requirements.txt"  #: MLflow's pip requirements, beside MLmodel
MLMODEL = "MLmodel"
#: The check MLflow makes while logging a model: mlflow.utils.environment calls it on the
#: requirements it writes; tests/tracking/test_requirements.py checks it is still there.
MLFLOW_CHECK = "warn_dependency_requirement_mismatches"

log = logging.getLogger(__name__)


def unmet(requirements: Iterable[str]) -> list[str]:
    """Each requirement this environment does not meet, one line each: a package missing or at
    another version. A line that is not a plain requirement (a path, a URL, an option) is not
    judged, as MLflow does not judge it; nor one whose marker excludes this environment."""
    found = []
    for line in requirements:
        try:
            requirement = Requirement(line.split("#", 1)[0].strip())
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            found.append(f"{requirement.name} (not installed; the model requires {requirement})")
            continue
        if requirement.specifier and not requirement.specifier.contains(installed, prereleases=True):
            found.append(f"{requirement.name} (installed {installed}; the model requires {requirement})")
    return found


def mismatches(model_dir: Path) -> list[str]:
    """What in this environment differs from what the model in `model_dir` was logged with: its
    requirements (`unmet`), and another Python minor version."""
    path = model_dir / REQUIREMENTS
    found = unmet(path.read_text().splitlines() if path.is_file() else [])
    logged = _python_version(model_dir / MLMODEL)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if logged and ".".join(logged.split(".")[:2]) != running:
        found.append(f"Python (running {running}; the model was logged with {logged})")
    return found


@contextmanager
def checked_here() -> Iterator[None]:
    """Inside the block, MLflow's requirement check while logging a model is `unmet`'s (the same
    warning, a second sooner). With an MLflow that no longer has that check where it was, its
    own runs."""
    from mlflow.utils import environment

    original = getattr(environment, MLFLOW_CHECK, None)
    if original is None:
        yield
        return

    def check(requirements: list[str]) -> None:
        for line in unmet(requirements):
            log.warning("the model's requirements are not this environment's: %s", line)

    setattr(environment, MLFLOW_CHECK, check)
    try:
        yield
    finally:
        setattr(environment, MLFLOW_CHECK, original)


def _python_version(mlmodel: Path) -> str | None:
    """The Python version the model was logged with (its python_function flavor's), if recorded."""
    if not mlmodel.is_file():
        return None
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    version = (flavors.get("python_function") or {}).get("python_version")
    return str(version) if version else None
