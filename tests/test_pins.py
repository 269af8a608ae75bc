"""conda.yaml (the environment `mlflow run .` builds) carries pyproject.toml's pins, not its own.

pyproject.toml is the source of truth; conda.yaml pre-installs some of the same packages before its
`-e .` installs the project. A package pinned in both must be pinned the same way, or the two
environments drift apart (and conda.yaml stops saying what it claims to).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def conda() -> dict:
    return yaml.safe_load((ROOT / "conda.yaml").read_text())


def conda_pip() -> list[str]:
    sections = [d["pip"] for d in conda()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(sections) == 1, "conda.yaml should have exactly one pip section"
    return sections[0]


def pins(requirements: list[str]) -> dict[str, SpecifierSet]:
    """Canonical name -> specifier, for every requirement line (editable installs skipped)."""
    out: dict[str, SpecifierSet] = {}
    for line in requirements:
        if line.startswith("-"):  # `-e .`: the project itself
            continue
        req = Requirement(line)
        name = canonicalize_name(req.name)
        assert name not in out, f"{req.name} is listed twice"
        out[name] = req.specifier
    return out


def test_conda_pip_pins_are_pyprojects() -> None:
    project, env = pins(pyproject()["dependencies"]), pins(conda_pip())
    assert env, "conda.yaml's pip section pins nothing"
    missing = sorted(set(env) - set(project))
    assert not missing, f"conda.yaml pins packages pyproject.toml does not depend on: {missing}"
    differ = {name: (str(env[name]), str(project[name])) for name in env if env[name] != project[name]}
    assert not differ, f"conda.yaml vs pyproject.toml specifiers differ: {differ}"


def test_conda_python_satisfies_requires_python() -> None:
    pythons = [
        d
        for d in conda()["dependencies"]
        if isinstance(d, str) and canonicalize_name(d.split("=")[0]) == "python"
    ]
    assert len(pythons) == 1, f"conda.yaml should pin python once: {pythons}"
    version = pythons[0].split("=", 1)[1].lstrip("=").rstrip(".*")
    requires = SpecifierSet(pyproject()["requires-python"])
    assert Version(version) in requires, f"conda.yaml's python={version} is outside {requires}"
