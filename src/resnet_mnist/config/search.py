"""A search space: which settings `tune` searches and over what ranges, from a YAML file beside
the presets (`mlproject/spaces/`). Each key is a TrainConfig setting:

    lr: {low: 0.005, high: 0.5, log: true}     # a float, log-uniform
    warmup_steps: {low: 0, high: 40}           # an int (the setting's type), uniform
    schedule: {choices: [constant, onecycle]}  # one of these values

Validated before any trial: the setting exists and may be searched, the bounds are of its type
and ordered, and both bounds (and every choice) make valid settings with the base preset. Knows
nothing of Optuna: `study.tune` asks its sampler for each dimension.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resnet_mnist.config.presets import PRESET_DIRS, find_yaml
from resnet_mnist.config.settings import FIELDS, TYPES, TrainConfig, _from_yaml, read_mapping
from resnet_mnist.config.space import ConfigError

SPACE_DIRS = tuple(d / "spaces" for d in PRESET_DIRS)
#: What a search must not change: the network it tunes (its depth and variant) and its name.
FIXED = ("use_residual", "depth", "preset")


@dataclass(frozen=True)
class Dimension:
    """One searched setting: a range (`low`..`high`, log-uniform when `log`) or `choices`."""

    name: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    @property
    def kind(self) -> type:
        return TYPES[self.name]

    def bounds(self) -> tuple[float, float]:
        """A range's (low, high); a ValueError for choices."""
        if self.low is None or self.high is None:
            raise ValueError(f"{self.name} is searched over choices, not a range")
        return float(self.low), float(self.high)

    def describe(self) -> str:
        if self.choices:
            return f"{self.name} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.name} in [{self.low:g}, {self.high:g}]{' (log)' if self.log else ''}"

    def edges(self) -> tuple[Any, ...]:
        """The values whose settings must all be valid: every choice, every value of an int
        range of up to 1,000 (a setting may refuse one inside), else both bounds."""
        if self.choices:
            return self.choices
        low, high = self.bounds()
        if self.kind is int and high - low <= 1000:
            return tuple(range(int(low), int(high) + 1))
        return (self.low, self.high)


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions of a search, in the file's order, and where they came from."""

    name: str
    dimensions: tuple[Dimension, ...]

    def key(self) -> str:
        """A short digest of the dimensions: a different space is a different search."""
        text = json.dumps([dataclasses.asdict(d) for d in self.dimensions], sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def check_with(self, base: TrainConfig) -> SearchSpace:
        """Refuse a space whose bounds or choices make invalid settings with `base`."""
        for dim in self.dimensions:
            for value in dim.edges():
                try:
                    dataclasses.replace(base, **{dim.name: value}).validate()
                except ConfigError as exc:
                    raise ConfigError(
                        f"search space {self.name}: {dim.name}={value!r} with the preset: {exc}"
                    ) from None
        return self


def find_space(name: str) -> Path:
    """A search space by name (`default`, `tiny`) or by path to a YAML file."""
    return find_yaml(name, SPACE_DIRS, "search space", "search spaces")


def load_space(name: str) -> SearchSpace:
    """Read and check a search space file (see the module docstring)."""
    path = find_space(name)
    raw = read_mapping(path, "search space", "setting: {low, high[, log]} or {choices}")
    if not raw:
        raise ConfigError(f"search space {path} names no setting to search")
    return SearchSpace(
        path.stem if path.parent.name == "spaces" else str(path),
        tuple(_dimension(str(path), str(key), spec) for key, spec in raw.items()),
    )


def _dimension(source: str, name: str, spec: Any) -> Dimension:
    where = f"search space {source}: {name}"
    if name not in FIELDS:
        raise ConfigError(f"{where} is not a setting (see `resnet-mnist train --help`)")
    if name in FIXED:
        raise ConfigError(f"{where} is what a search compares or names, not a setting to search")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping: {{low, high[, log]}} or {{choices: [...]}}")
    unknown = set(spec) - {"low", "high", "log", "choices"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(sorted(map(str, unknown)))}")
    if "choices" in spec:
        return _choices(where, name, spec)
    return _range(where, name, spec)


def _choices(where: str, name: str, spec: dict) -> Dimension:
    if set(spec) != {"choices"}:
        raise ConfigError(f"{where}: `choices` stands alone (no low, high or log)")
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"{where}: choices must be a non-empty list")
    values = tuple(_from_yaml(name, c, where) for c in choices)
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: choices repeat a value")
    return Dimension(name, choices=values)


def _range(where: str, name: str, spec: dict) -> Dimension:
    kind = TYPES[name]
    if kind not in (int, float):
        raise ConfigError(f"{where} is a {getattr(kind, '__name__', kind)} setting: give `choices`")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where} needs both `low` and `high`")
    low, high = (_from_yaml(name, spec[k], where) for k in ("low", "high"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false")
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"{where}: needs finite low < high, got {low!r}..{high!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {low!r}")
    return Dimension(name, low, high, log)
