"""Training settings: one validated dataclass, filled from a preset file and then overrides.

Presets live in `mlproject/` as YAML (data only). A preset may hold per-variant values under
`variants: {plain: {...}, residual: {...}}`, as the book trains the two with different settings.
Everything is validated before any run starts, so bad input never leaves a half-made run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from resnet_mnist.data import DEV_SIZE, NORMALIZATIONS, TEST_SIZE, TRAIN_SIZE

PRESET_DIRS = (Path("mlproject"), Path(__file__).resolve().parents[2] / "mlproject")
SCHEDULES = ("constant", "onecycle")
PRECISIONS = ("auto", "fp32", "bf16")
SWITCHES = ("auto", "true", "false")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A preset or parameter is invalid; the message names it and the allowed range."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting a training run uses; all of it is logged as MLflow params."""

    use_residual: bool = True
    preset: str = "custom"
    train_size: int = 2000
    dev_size: int = 200
    test_size: int = 200
    epochs: int = 5
    batch_size: int = 128
    eval_batch_size: int = 1000
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "constant"
    label_smoothing: float = 0.0
    eval_steps: int = 15
    log_steps: int = 15
    normalize: str = "seed"
    seed: int = 100
    device: str = "auto"
    precision: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    checkpoint_every: int = 0
    sync_bn: bool = False
    data_root: str = field(default="", metadata={"log": False})

    @property
    def variant(self) -> str:
        return "residual" if self.use_residual else "plain"

    def params(self) -> dict[str, Any]:
        """The values to log: everything except local paths."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.metadata.get("log", True)} | {"variant": self.variant}

    def validate(self) -> TrainConfig:
        checks = [
            (math.isfinite(self.lr) and self.lr > 0, f"lr={self.lr} must be a finite number > 0"),
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1"),
            (self.eval_batch_size >= 1, f"eval_batch_size={self.eval_batch_size} must be >= 1"),
            (self.epochs >= 1, f"epochs={self.epochs} must be >= 1"),
            (self.eval_steps >= 0, f"eval_steps={self.eval_steps} must be >= 0 (0: at the end)"),
            (self.log_steps >= 1, f"log_steps={self.log_steps} must be >= 1"),
            (self.checkpoint_every >= 0,
             f"checkpoint_every={self.checkpoint_every} must be >= 0 (0: only when stopped)"),
            (1 <= self.train_size <= TRAIN_SIZE,
             f"train_size={self.train_size} must be in 1..{TRAIN_SIZE} (the train split)"),
            (1 <= self.dev_size <= DEV_SIZE,
             f"dev_size={self.dev_size} must be in 1..{DEV_SIZE} (the dev split)"),
            (1 <= self.test_size <= TEST_SIZE,
             f"test_size={self.test_size} must be in 1..{TEST_SIZE} (the test split)"),
            (math.isfinite(self.momentum) and 0 <= self.momentum < 1,
             f"momentum={self.momentum} must be in [0, 1)"),
            (not self.nesterov or self.momentum > 0, "nesterov needs momentum > 0"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay={self.weight_decay} must be >= 0"),
            (0 <= self.label_smoothing < 1,
             f"label_smoothing={self.label_smoothing} must be in [0, 1)"),
            (self.schedule in SCHEDULES,
             f"schedule={self.schedule!r} must be one of {', '.join(SCHEDULES)}"),
            (self.normalize in NORMALIZATIONS,
             f"normalize={self.normalize!r} must be one of {', '.join(NORMALIZATIONS)}"),
            (not self.sync_bn or self.device != "cpu",
             "sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)"),
            (self.device in DEVICES, f"device={self.device!r} must be one of {', '.join(DEVICES)}"),
            (self.precision in PRECISIONS,
             f"precision={self.precision!r} must be one of {', '.join(PRECISIONS)}"),
            (self.channels_last in SWITCHES,
             f"channels_last={self.channels_last!r} must be one of {', '.join(SWITCHES)}"),
        ]
        errors = [message for ok, message in checks if not ok]
        if errors:
            raise ConfigError("; ".join(errors))
        return self


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def from_params(params: dict[str, str], **overrides: Any) -> TrainConfig:
    """Rebuild the config a run logged (MLflow params are strings), e.g. to resume it."""
    values: dict[str, Any] = {}
    for name in FIELDS:
        if name not in params:
            continue
        kind, raw = type(getattr(TrainConfig(), name)), params[name]
        if kind is bool:
            values[name] = raw == "True"
        elif kind in (int, float):
            values[name] = kind(raw)
        else:
            values[name] = raw
    return TrainConfig(**(values | overrides)).validate()


def find_preset(name: str) -> Path:
    """A preset by name (`seed`, `full`, `smoke`) or by path to a YAML file."""
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml"):
        if candidate.is_file():
            return candidate
        raise ConfigError(f"preset file {name} does not exist")
    for directory in PRESET_DIRS:
        path = directory / f"{name}.yaml"
        if path.is_file():
            return path
    known = sorted({p.stem for d in PRESET_DIRS if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(known) or 'none'}")


def _coerce(name: str, value: Any, source: str) -> Any:
    kind = type(getattr(TrainConfig(), name))
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be true or false, got {value!r}")
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {name} must be of type {kind.__name__}, got {value!r}")
    return value


def load_preset(name: str, use_residual: bool) -> dict[str, Any]:
    """Read a preset into a flat dict for one variant, refusing bad YAML and unknown keys."""
    path = find_preset(name)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"preset {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"preset {path} must be a mapping of setting: value")
    variants = raw.pop("variants", {}) or {}
    if not isinstance(variants, dict) or set(variants) - {"plain", "residual"}:
        raise ConfigError(f"preset {path}: `variants` may only hold `plain` and `residual`")
    values = dict(raw) | dict(variants.get("residual" if use_residual else "plain") or {})
    unknown = set(values) - set(FIELDS) | ({"use_residual", "preset"} & set(values))
    if unknown:
        raise ConfigError(f"preset {path}: unknown keys {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(k for k in FIELDS if k not in ('preset',))}")
    return {k: _coerce(k, v, str(path)) for k, v in values.items()}


def build_config(
    preset: str, use_residual: bool, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """Preset values, then non-None overrides (the CLI's options), validated."""
    values = load_preset(preset, use_residual)
    values |= {k: v for k, v in (overrides or {}).items() if v is not None}
    return TrainConfig(use_residual=use_residual, preset=Path(preset).stem, **values).validate()
