"""Where preset and study files are found: a path given by the user, `./mlproject` (a checkout, and
what `mlproject/*.yaml` in the MLproject means), then the copy shipped inside the package
(`bundled`, the same files), so an installed wheel finds them as well as a checkout does."""

from __future__ import annotations

from pathlib import Path

from resnet_mnist.config.space import ConfigError

#: The top-level `mlproject/` folder, shipped in the wheel as package data (in a checkout a link).
BUNDLED = Path(__file__).resolve().parent / "bundled"
PRESET_DIRS = (Path("mlproject"), BUNDLED)
STUDY_DIRS = tuple(d / "studies" for d in PRESET_DIRS)


def find_yaml(name: str, directories: tuple[Path, ...], kind: str, kinds: str) -> Path:
    """A YAML file of `kind` (preset, study) by name, looked up in `directories`, or by path;
    an unknown name is a ConfigError listing the known ones."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"{kind} file {name} does not exist")
    for directory in directories:
        path = directory / f"{name}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in directories if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"unknown {kind} {name!r}; known {kinds}: {', '.join(known) or 'none'}")
