"""Whether this environment runs a downloaded model as it was logged: its pinned packages and its
Python version.

MLflow makes the same check when it loads a model, but to find each package it first maps every
installed distribution to its modules (`importlib_metadata.packages_distributions`, which reads
every RECORD file): 1.0 s of each `resnet-mnist predict` here, for three pins. The pins name their
distributions, so `importlib.metadata.version` answers each in microseconds; the loader then asks
MLflow to skip its own check (`suppress_warnings`), and the warning is still given.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import yaml
from packaging.requirements import InvalidRequirement, Requirement

REQUIREMENTS = "requirements.txt"  #: MLflow's pip requirements, beside MLmodel
MLMODEL = "MLmodel"


def mismatches(model_dir: Path) -> list[str]:
    """What in this environment differs from what the model in `model_dir` was logged with, one
    line each: a pinned package missing or at another version, another Python minor version. A
    line that is not a plain requirement (a path, a URL, an option) is not judged, as MLflow
    does not judge it."""
    found = []
    path = model_dir / REQUIREMENTS
    for line in path.read_text().splitlines() if path.is_file() else []:
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
    logged = _python_version(model_dir / MLMODEL)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    if logged and ".".join(logged.split(".")[:2]) != running:
        found.append(f"Python (running {running}; the model was logged with {logged})")
    return found


def _python_version(mlmodel: Path) -> str | None:
    """The Python version the model was logged with (its python_function flavor's), if recorded."""
    if not mlmodel.is_file():
        return None
    flavors = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors") or {}
    version = (flavors.get("python_function") or {}).get("python_version")
    return str(version) if version else None
