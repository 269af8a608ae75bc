"""Training settings: one validated dataclass, filled from a preset file and then overrides.

`TrainConfig` is the single source of every hyper-parameter: its fields carry their type and help
text, and the CLI's options, the MLflow Project's `-P` parameters and the logged params all follow
from it, so a new setting is one field here. Presets live in `mlproject/` as YAML (data only); a
preset may hold per-variant values under `variants: {plain: {...}, residual: {...}}`, as the book
trains the two with different settings. Everything is validated before any run starts.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from resnet_mnist.config.presets import PRESET_DIRS, find_yaml
from resnet_mnist.config.space import (
    DEPTH_HELP,
    DEV_SIZE,
    TEST_SIZE,
    TRAIN_SIZE,
    ConfigError,
    family,
)


class Schedule(StrEnum):
    constant = "constant"
    onecycle = "onecycle"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Switch(StrEnum):
    """A setting that is on, off, or chosen by the device (`auto`)."""

    auto = "auto"
    true = "true"
    false = "false"


class Normalize(StrEnum):
    """The input normalisations of `config.space.NORMALIZATIONS` (a test keeps the two equal)."""

    seed = "seed"
    mnist = "mnist"
    none = "none"


def setting(default: Any, help: str, **meta: Any) -> Any:
    """A TrainConfig field with its help text (shown by `resnet-mnist train --help`)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run: logged as MLflow params, compared between runs and kept in
    the checkpoint. Where it runs is a `config.placement.Placement`."""

    use_residual: bool = setting(
        True, "ResNet18 with shortcuts (true) or the plain network without them (false).", preset=False
    )
    depth: int = setting(18, f"Network depth: {DEPTH_HELP}.")
    preset: str = setting("custom", "", cli=False, preset=False)
    train_size: int = setting(2000, "Train on the first N of the 50,000 training images.")
    dev_size: int = setting(200, "Evaluate on the first N of the 10,000 dev images.")
    test_size: int = setting(200, "Score the best checkpoint on the first N of the 10,000 test images.")
    epochs: int = setting(5, "Passes over the training subset.")
    batch_size: int = setting(128, "Mini-batch size (the global batch under --nproc).")
    eval_batch_size: int = setting(1000, "Batch size for evaluation.")
    lr: float = setting(0.01, "Learning rate (> 0); the peak rate with the onecycle schedule.")
    momentum: float = setting(0.0, "SGD momentum in [0, 1) (the book: 0).")
    nesterov: bool = setting(False, "Nesterov momentum (needs momentum > 0).")
    weight_decay: float = setting(0.0, "L2 weight decay (>= 0).")
    schedule: Schedule = setting(Schedule.constant, "Learning-rate schedule.")
    warmup_steps: int = setting(
        0,
        "Steps over which the rate climbs linearly to lr (0: none; with onecycle, 0 keeps its own "
        "rise over the first 30 % of the steps and N sets that rise to N steps).",
    )
    label_smoothing: float = setting(0.0, "Cross-entropy label smoothing in [0, 1).")
    eval_steps: int = setting(15, "Evaluate on dev every N steps and at the last step (0: only at the last).")
    log_steps: int = setting(15, "Fetch and report the training loss every N steps.")
    normalize: Normalize = setting(
        Normalize.seed,
        "Input normalisation: seed (the book's mean 1, std 1) or mnist (mean 0.1307, std 0.3081).",
    )
    augment: bool = setting(
        False,
        "Vary each training batch on the device: rotation, scale, shift and pen width, so that the "
        "model reads digits as people bring them (off in the book's setting).",
    )
    seed: int = setting(100, "Torch seed: initial weights and batch order.")
    precision: Precision = setting(Precision.auto, "auto: bf16 autocast on CUDA, fp32 on CPU.")
    channels_last: Switch = setting(Switch.auto, "channels_last memory format (auto: on CUDA).")
    compile: bool = setting(False, "torch.compile the model (eager with a warning if it fails).")
    checkpoint_every: int = setting(
        0, "Save a resumable checkpoint every N steps (0: only when stopped by Ctrl-C or SIGTERM)."
    )
    diagnostics: bool = setting(
        False,
        "Record per-stage gradient norms at every log step, "
        "activation and gradient statistics at initialisation, and a "
        "block-lesion test after training.",
    )
    sync_bn: bool = setting(False, "SyncBatchNorm across processes under --nproc (CUDA only).")

    @property
    def variant(self) -> str:
        return "residual" if self.use_residual else "plain"

    @property
    def architecture(self) -> str:
        """`resnet18-plain`, `resnet56-residual`: depth and variant, as runs are named."""
        return f"resnet{self.depth}-{self.variant}"

    def total_steps(self) -> int:
        """The optimiser steps of the whole training (the global batch under --nproc)."""
        return -(-max(self.train_size, 1) // max(self.batch_size, 1)) * max(self.epochs, 1)

    def params(self) -> dict[str, Any]:
        """The values to log: every setting, plus the variant."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | {"variant": self.variant}

    def validate(self) -> TrainConfig:
        try:
            family(self.depth)
            depth_ok = True
        except ValueError:
            depth_ok = False
        checks = [
            (depth_ok, f"depth={self.depth} is not a ResNet depth: use {DEPTH_HELP}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be a finite number > 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.eval_batch_size >= 1, f"eval_batch_size={self.eval_batch_size} must be >= 1"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.eval_steps >= 0, f"eval_steps={self.eval_steps} must be >= 0 (0: at the end)"),
            (self.log_steps >= 1, f"log_steps={self.log_steps} must be >= 1"),
            (
                0 <= self.warmup_steps < self.total_steps(),
                f"warmup_steps={self.warmup_steps} must be in 0..{self.total_steps() - 1} "
                "(fewer than the training's steps)",
            ),
            (
                self.schedule != "onecycle" or self.warmup_steps != 1,
                "warmup_steps=1 cannot shape onecycle's rise (use 0 for its own, or 2 or more)",
            ),
            (
                self.checkpoint_every >= 0,
                f"checkpoint_every={self.checkpoint_every} must be >= 0 (0: only when stopped)",
            ),
            (
                1 <= self.train_size <= TRAIN_SIZE,
                f"train_size={self.train_size} must be in 1..{TRAIN_SIZE} (the train split)",
            ),
            (
                1 <= self.dev_size <= DEV_SIZE,
                f"dev_size={self.dev_size} must be in 1..{DEV_SIZE} (the dev split)",
            ),
            (
                1 <= self.test_size <= TEST_SIZE,
                f"test_size={self.test_size} must be in 1..{TEST_SIZE} (the test split)",
            ),
            (
                math.isfinite(self.momentum) and 0 <= self.momentum < 1,
                f"momentum={self.momentum} must be in [0, 1)",
            ),
            (not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0"),
            (
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                f"weight_decay={self.weight_decay} must be >= 0",
            ),
            (0 <= self.label_smoothing < 1, f"label_smoothing={self.label_smoothing} must be in [0, 1)"),
        ]
        for name, kind in TYPES.items():
            if isinstance(kind, type) and issubclass(kind, StrEnum):
                value = getattr(self, name)
                checks.append((value in list(kind), f"{name}={value!r} must be one of {', '.join(kind)}"))
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ConfigError("; ".join(errors))
        return self


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
DEFAULTS = TrainConfig()
TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)
TRUE, FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def parse_bool(value: str | bool) -> bool:
    """`true`/`false` (also 1/0, yes/no, on/off, any case): how booleans arrive as text."""
    if isinstance(value, bool):
        return value
    lowered = str(value).strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"{value!r} is not true or false")


def coerce(name: str, value: Any) -> Any:
    """A value for setting `name` from text (logged params, `-P`) or YAML, in the field's type.

    Raises ValueError with a message that says what was expected.
    """
    return coerce_as(TYPES[name], name, value)


def coerce_as(kind: Any, name: str, value: Any) -> Any:
    """`value` as type `kind` (bool, int, float, str or an enum) for the field `name`."""
    if kind is bool:
        return parse_bool(value)
    if isinstance(value, bool):
        raise ValueError(f"{name} must be of type {kind.__name__}, got {value!r}")
    if issubclass(kind, StrEnum):
        try:
            return kind(str(value))
        except ValueError:
            raise ValueError(f"{name}={value!r} must be one of {', '.join(kind)}") from None
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(f"{name} must be of type int, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be of type {kind.__name__}, got {value!r}") from None


def from_params(params: Mapping[str, str]) -> TrainConfig:
    """Rebuild the settings a run logged (MLflow params are strings), e.g. to resume it; what
    is not a setting (the device an older run logged, DDP's world) is not read."""
    values = {name: coerce(name, raw) for name, raw in params.items() if name in FIELDS}
    return TrainConfig(**values).validate()


def differing_settings(logged: Mapping[str, str], config: TrainConfig) -> list[str]:
    """The settings on which values logged as text (a run's params, a checkpoint's) and `config`
    disagree: the one settings equality. A setting absent from `logged` (its run predates it)
    holds its default; what is not a setting (the device, the variant's name) is not compared."""
    return sorted(
        k
        for k in FIELDS
        if not (
            same_value(k, logged[k], getattr(config, k))
            if k in logged
            else getattr(DEFAULTS, k) == getattr(config, k)
        )
    )


def same_value(name: str, logged: str, value: Any) -> bool:
    """Whether a param already logged as text (e.g. by `mlflow run -P`) means `value`."""
    if name == "preset":
        return Path(logged).stem == str(value)
    if name not in FIELDS:
        return logged == str(value)
    try:
        return coerce(name, logged) == value
    except ValueError:
        return False


def read_mapping(path: Path, kind: str, shape: str) -> dict:
    """A YAML file that must hold one mapping; a ConfigError naming the file otherwise."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} {path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{kind} {path} must be a mapping of {shape}")
    return raw


def find_preset(name: str) -> Path:
    """A preset by name (`seed`, `full`, `smoke`) or by path to a YAML file."""
    return find_yaml(name, PRESET_DIRS, "preset", "presets")


PRESET_KEYS = [name for name, f in FIELDS.items() if f.metadata.get("preset", True)]


def _from_yaml(name: str, value: Any, source: str) -> Any:
    """YAML already typed its values: only int -> float widening and enum names are accepted."""
    kind = TYPES[name]
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    if kind in (int, float) and (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (kind is int and isinstance(value, float))
    ):
        raise ConfigError(f"{source}: {name} must be of type {kind.__name__}, got {value!r}")
    try:
        return coerce(name, value)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_preset(name: str, use_residual: bool) -> dict[str, Any]:
    """Read a preset into a flat dict for one variant, refusing bad YAML and unknown keys."""
    path = find_preset(name)
    raw = read_mapping(path, "preset", "setting: value")
    variants = raw.pop("variants", {}) or {}
    if not isinstance(variants, dict) or set(variants) - {"plain", "residual"}:
        raise ConfigError(f"preset {path}: `variants` may only hold `plain` and `residual`")
    values = dict(raw) | dict(variants.get("residual" if use_residual else "plain") or {})
    unknown = set(values) - set(PRESET_KEYS)
    if unknown:
        raise ConfigError(
            f"preset {path}: unknown keys {', '.join(sorted(map(str, unknown)))}; "
            f"allowed: {', '.join(PRESET_KEYS)}"
        )
    return {k: _from_yaml(k, v, str(path)) for k, v in values.items()}


def build_config(preset: str, use_residual: bool, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Preset values, then non-None overrides (the CLI's options), validated."""
    values = load_preset(preset, use_residual)
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    return TrainConfig(use_residual=use_residual, preset=Path(preset).stem, **values).validate()
