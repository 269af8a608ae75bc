"""The residual study: where do shortcuts matter? A depth x variant x seed grid as nested runs.

A study file (`mlproject/studies/*.yaml`) names a training preset whose settings both variants
share, the depths, the seeds and a small learning-rate grid. Each (depth, variant) group first
trains seed 0 at every rate of the grid and keeps the rate with the best full-dev accuracy, then
trains the other seeds at that rate, so that neither variant is handicapped by a rate chosen for
the other. Every cell is a training run nested under one study run, tagged with its cell key; a
cell that already finished is never trained again, so a stopped study continues where it stopped.
What one cell does is `cells`, how the grid is scheduled `execution`, where it runs (Ray)
`cluster`; reading the finished grid back and judging it is `report`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resnet_mnist.config.presets import STUDY_DIRS, find_yaml
from resnet_mnist.config.settings import (
    FIELDS,
    ConfigError,
    TrainConfig,
    _from_yaml,
    build_config,
    find_preset,
    load_preset,
    read_mapping,
)
from resnet_mnist.config.space import VARIANTS
from resnet_mnist.core.model import family


@dataclass(frozen=True)
class Resources:
    """What one cell asks of the cluster: CPU slots (also its torch threads) and a GPU fraction,
    so that several small cells share one GPU."""

    cpus: float = 1.0
    gpus: float = 0.0

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))

    def __str__(self) -> str:
        gpus = f" and {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU{'s' * (self.cpus != 1)}{gpus}"


@dataclass(frozen=True)
class TuneBudget:
    """A tuned study's search, the same for every (depth, variant): `trials` trials of the
    preset's epochs over `space`, all trained on the selection `seed` (which no scored cell
    uses, so that the seeds that judge the settings did not choose them), judged by `pruner`,
    with `settings` that only the trials use (how often they evaluate, on how much of dev)."""

    trials: int
    space: str = "study"
    seed: int = 100
    pruner: str = "median"
    settings: tuple[tuple[str, Any], ...] = field(default=())

    def describe(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.settings)
        return (
            f"{self.trials} trials per (depth, variant) over space {self.space} on selection seed "
            f"{self.seed}, pruner {self.pruner}" + (f"; trials with {extra}" if extra else "")
        )


@dataclass(frozen=True)
class StudySpec:
    """What a study trains: the shared preset, the depths, seeds and either a learning-rate grid
    or a tune budget, and what each cell asks of the cluster (which does not change what a cell
    computes, so not its key)."""

    name: str
    preset: str
    depths: tuple[int, ...]
    seeds: tuple[int, ...]
    lrs: tuple[float, ...]
    resources: Resources = Resources()
    tune: TuneBudget | None = None

    def key(self) -> str:
        """Identifies the grid: the same study on another machine finds the same study run."""
        settings = load_preset(self.preset, True)
        grid: dict[str, Any] = {
            "preset": self.preset,
            "settings": {k: str(v) for k, v in sorted(settings.items())},
            "depths": self.depths,
            "seeds": self.seeds,
        }
        grid |= {"tune": repr(self.tune)} if self.tune else {"lrs": self.lrs}
        return hashlib.sha256(json.dumps(grid).encode()).hexdigest()[:16]

    def groups(self) -> list[Group]:
        """Deepest first (they take longest, so they start first), plain before residual."""
        return [Group(d, v == "residual") for d in sorted(self.depths, reverse=True) for v in VARIANTS]

    def cell_count(self) -> int:
        """How many cells the grid trains: every rate on the first seed, then the other seeds;
        tuned, every seed at the group's tuned settings (the trials are the searches')."""
        if self.tune:
            return len(self.groups()) * len(self.seeds)
        return len(self.groups()) * (len(self.lrs) + len(self.seeds) - 1)


@dataclass(frozen=True)
class Group:
    """One (depth, variant) pair of the grid: its rate search and its seeds."""

    depth: int
    use_residual: bool

    @property
    def name(self) -> str:
        return f"resnet{self.depth}-{'residual' if self.use_residual else 'plain'}"


Chosen = float | Mapping[str, Any]


def chosen_settings(chosen: Chosen) -> dict[str, Any]:
    """A grid's rate, or a tuned group's settings, as settings."""
    return {"lr": chosen} if isinstance(chosen, float | int) else dict(chosen)


def cell_key(group: Group | str, chosen: Chosen, seed: int) -> str:
    """A cell's stable name within its study: what every attempt at it is tagged with, and what
    the report counts (exactly one FINISHED run per key). `chosen` is the grid's rate or the
    tuned settings (`resnet56-plain/lr=0.0731,warmup_steps=40/seed=2`)."""
    name = group if isinstance(group, str) else group.name
    settings = ",".join(f"{k}={_text(v)}" for k, v in sorted(chosen_settings(chosen).items()))
    return f"{name}/{settings}/seed={seed}"


def _text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(getattr(value, "value", value))


def find_study(name: str) -> Path:
    """A study by name (`cpu`, `gpu`, `tiny`) or by path to a YAML file."""
    return find_yaml(name, STUDY_DIRS, "study", "studies")


def _numbers(value: Any, kind: type, what: str, source: str) -> tuple:
    items = value if isinstance(value, list) else [value]
    if not items or any(
        isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not float(v).is_integer())
        for v in items
    ):
        raise ConfigError(f"{source}: {what} must be a non-empty list of numbers, got {value!r}")
    out = tuple(kind(v) for v in items)
    if len(set(out)) != len(out):
        raise ConfigError(f"{source}: {what} repeats a value: {value!r}")
    return out


def _resources(value: Any, source: str) -> Resources:
    """`resources: {cpus: 2, gpus: 0.25}`: CPUs a whole number >= 1, a GPU fraction in [0, 1] or
    a whole number of GPUs."""
    if not isinstance(value, dict) or set(value) - {"cpus", "gpus"}:
        raise ConfigError(f"{source}: resources takes cpus and gpus, got {value!r}")
    cpus, gpus = value.get("cpus", 1), value.get("gpus", 0)
    for what, number in (("cpus", cpus), ("gpus", gpus)):
        if isinstance(number, bool) or not isinstance(number, int | float) or number < 0:
            raise ConfigError(f"{source}: resources.{what} must be a number >= 0, got {number!r}")
    if cpus < 1 or not float(cpus).is_integer():
        raise ConfigError(f"{source}: resources.cpus must be a whole number >= 1, got {cpus!r}")
    if gpus > 1 and not float(gpus).is_integer():
        raise ConfigError(f"{source}: resources.gpus above 1 must be whole GPUs, got {gpus!r}")
    return Resources(float(cpus), float(gpus))


STUDY_KEYS = ("preset", "depths", "seeds", "lrs", "resources", "tune")
TUNE_KEYS = ("trials", "space", "seed", "pruner", "settings")
PRUNERS = ("median", "halving", "none")


def _tune(value: Any, source: str) -> TuneBudget:
    """`tune: {trials: 6, space: study, seed: 100, pruner: median, settings: {eval_steps: 63}}`."""
    if not isinstance(value, dict) or set(value) - set(TUNE_KEYS) or "trials" not in value:
        raise ConfigError(f"{source}: tune takes {', '.join(TUNE_KEYS)} (trials required), got {value!r}")
    trials, seed = value["trials"], value.get("seed", 100)
    for what, number in (("trials", trials), ("seed", seed)):
        if isinstance(number, bool) or not isinstance(number, int) or number < (what == "trials"):
            raise ConfigError(f"{source}: tune.{what} must be a whole number >= {int(what == 'trials')}")
    pruner = str(value.get("pruner", "median"))
    if pruner not in PRUNERS:
        raise ConfigError(f"{source}: tune.pruner must be one of {', '.join(PRUNERS)}, got {pruner!r}")
    settings = value.get("settings") or {}
    if not isinstance(settings, dict) or set(settings) & {"depth", "seed", "use_residual", "preset"}:
        raise ConfigError(
            f"{source}: tune.settings is a mapping of settings the trials alone use (not depth, "
            f"seed, use_residual or preset), got {settings!r}"
        )
    for key in settings:
        if key not in FIELDS:
            raise ConfigError(f"{source}: tune.settings.{key} is not a setting (`resnet-mnist train --help`)")
    typed = {str(k): _from_yaml(str(k), v, f"{source}: tune.settings.{k}") for k, v in settings.items()}
    return TuneBudget(trials, str(value.get("space", "study")), seed, pruner, tuple(sorted(typed.items())))


def load_study(
    name: str,
    depths: list[int] | None = None,
    seeds: list[int] | None = None,
    lrs: list[float] | None = None,
    cpus: int | None = None,
    gpus: float | None = None,
) -> StudySpec:
    """A study file, with any of its lists (or a cell's resources) replaced; everything validated
    before training."""
    path = find_study(name)
    raw = read_mapping(path, "study", ", ".join(STUDY_KEYS))
    unknown = set(raw) - set(STUDY_KEYS)
    if unknown or "preset" not in raw:
        raise ConfigError(
            f"study {path} takes {', '.join(STUDY_KEYS)}; "
            f"{'unknown: ' + ', '.join(map(str, unknown)) if unknown else 'no preset'}"
        )
    source = str(path)
    tune = _tune(raw["tune"], source) if "tune" in raw else None
    if tune and (lrs or raw.get("lrs")):
        raise ConfigError(
            f"{source}: a tuned study searches its space for every group (tune:); it takes no "
            "learning-rate grid (lrs, --lrs)"
        )
    spec = StudySpec(
        name=path.stem,
        preset=str(raw["preset"]),
        depths=_numbers(depths or raw.get("depths", [18]), int, "depths", source),
        seeds=_numbers(seeds or raw.get("seeds", [0]), int, "seeds", source),
        lrs=()
        if tune
        else _numbers(
            lrs or raw.get("lrs", []) or [load_preset(str(raw["preset"]), True).get("lr", TrainConfig.lr)],
            float,
            "lrs",
            source,
        ),
        resources=_resources(
            (raw.get("resources") or {})
            | ({"cpus": cpus} if cpus is not None else {})
            | ({"gpus": gpus} if gpus is not None else {}),
            source,
        ),
        tune=tune,
    )
    for depth in spec.depths:
        try:
            family(depth)
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
    find_preset(spec.preset)
    if load_preset(spec.preset, True) != load_preset(spec.preset, False):
        raise ConfigError(
            f"preset {spec.preset!r} sets the variants differently; a study "
            "compares them with matched settings (one value per setting)"
        )
    if tune:
        _check_tune(spec, tune, source)
    else:
        for group in spec.groups():  # every cell's settings are valid
            cell_config(spec, group, spec.lrs[0], spec.seeds[0])
    return spec


def _check_tune(spec: StudySpec, tune: TuneBudget, source: str) -> None:
    """The selection seed is not scored, and the space makes valid settings for every group."""
    from resnet_mnist.config.search import load_space

    if tune.seed in spec.seeds:
        raise ConfigError(
            f"{source}: tune.seed {tune.seed} is also a scored seed; the seed that chooses the "
            "settings must not judge them (pick one outside seeds)"
        )
    space = load_space(tune.space)
    both = set(space.names()) & {k for k, _ in tune.settings}
    if both:
        raise ConfigError(f"{source}: tune.settings fixes what the space searches: {', '.join(sorted(both))}")
    for group in spec.groups():
        space.check_with(trial_base(spec, group))
        cell_config(spec, group, {}, spec.seeds[0])


def cell_config(spec: StudySpec, group: Group, chosen: Chosen, seed: int) -> TrainConfig:
    """One cell's settings: the study's preset at the group's depth and variant, a rate (or the
    tuned settings), a seed."""
    return build_config(
        spec.preset, group.use_residual, {"depth": group.depth, **chosen_settings(chosen), "seed": seed}
    )


def trial_base(spec: StudySpec, group: Group) -> TrainConfig:
    """What a tuned group's search starts from: the preset at the group's depth and variant, on
    the selection seed, with the trials' own settings."""
    if spec.tune is None:
        raise ValueError(f"study {spec.name} has no tune budget")
    overrides = {"depth": group.depth, **dict(spec.tune.settings), "seed": spec.tune.seed}
    return build_config(spec.preset, group.use_residual, overrides)


def choose_lr(dev_accuracy: dict[float, float]) -> float:
    """The rate with the best dev accuracy; on a tie the smaller rate (the safer one)."""
    return max(sorted(dev_accuracy), key=lambda lr: (dev_accuracy[lr], -lr))
