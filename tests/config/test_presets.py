"""Presets and study files are found by name from a checkout and from an installed wheel alike."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from resnet_mnist.config.presets import BUNDLED, PRESET_DIRS, STUDY_DIRS, find_yaml
from resnet_mnist.config.space import ConfigError
from tests.conftest import REPO


def test_the_bundled_files_are_the_checkouts_mlproject_folder() -> None:
    names = sorted(p.name for p in BUNDLED.glob("*.yaml"))
    assert names == sorted(p.name for p in (REPO / "mlproject").glob("*.yaml"))
    assert {"seed.yaml", "full.yaml", "smoke.yaml"} <= set(names)
    assert (BUNDLED / "studies" / "cpu.yaml").read_text() == (REPO / "mlproject/studies/cpu.yaml").read_text()


def test_a_name_is_found_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./mlproject here
    assert find_yaml("seed", PRESET_DIRS, "preset", "presets") == BUNDLED / "seed.yaml"
    assert find_yaml("tiny", STUDY_DIRS, "study", "studies") == BUNDLED / "studies" / "tiny.yaml"
    with pytest.raises(ConfigError, match="unknown preset 'nope'; known presets: full, seed"):
        find_yaml("nope", PRESET_DIRS, "preset", "presets")


@pytest.mark.slow  # builds the wheel
def test_an_installed_wheel_finds_its_presets(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("resnet_mnist-*.whl")
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    probe = (
        "import resnet_mnist; from resnet_mnist.config.settings import build_config; "
        "from resnet_mnist.study.spec import load_study; print(resnet_mnist.__file__); "
        "print(build_config('seed', True).epochs, load_study('cpu', None, None, None).depths)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0].startswith(str(site))  # the wheel's copy, not the checkout's
    assert out[1] == "5 (8, 20, 56)"
