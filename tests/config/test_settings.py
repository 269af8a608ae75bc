"""Config: presets, per-variant values, overrides, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from resnet_mnist.config.settings import ConfigError, build_config


def test_seed_preset_is_the_books_setting() -> None:
    plain = build_config("seed", use_residual=False)
    residual = build_config("seed", use_residual=True)
    assert (plain.lr, plain.batch_size, residual.lr, residual.batch_size) == (0.005, 64, 0.01, 128)
    for cfg in (plain, residual):
        assert (cfg.train_size, cfg.dev_size, cfg.test_size) == (2000, 200, 200)
        assert (cfg.epochs, cfg.eval_steps, cfg.log_steps, cfg.seed) == (5, 15, 15, 100)
        assert cfg.normalize == "seed" and cfg.momentum == 0.0 and cfg.preset == "seed"


def test_overrides_win_and_none_keeps_preset() -> None:
    cfg = build_config("seed", True, {"lr": 0.02, "epochs": None, "seed": 7})
    assert (cfg.lr, cfg.epochs, cfg.seed) == (0.02, 5, 7)
    assert cfg.params()["variant"] == "residual"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"lr": 0.0}, "lr=0.0 must be a finite number > 0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"batch_size": 0}, "batch_size=0 must be >= 1"),
        ({"epochs": 0}, "epochs=0"),
        ({"eval_steps": -1}, "eval_steps=-1"),
        ({"dev_size": 10001}, "dev_size=10001 must be in 1..10000"),
        ({"train_size": 50001}, "train_size=50001"),
        ({"normalize": "zscore"}, "normalize='zscore'"),
        ({"warmup_steps": 80}, "warmup_steps=80 must be in 0..79"),
        ({"warmup_steps": -1}, "warmup_steps=-1 must be in 0..79"),
        ({"warmup_steps": 1, "schedule": "onecycle"}, "warmup_steps=1 cannot shape onecycle's rise"),
    ],
)
def test_invalid_values_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        build_config("seed", True, overrides)


def test_unknown_preset_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'nope'; known presets: .*seed"):
        build_config("nope", True)


def test_bad_yaml_and_unknown_keys(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(str(bad), True)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("lr: 0.1\nlearning_rate: 0.2\n")
    with pytest.raises(ConfigError, match="unknown keys learning_rate"):
        build_config(str(unknown), True)
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("batch_size: many\n")
    with pytest.raises(ConfigError, match="batch_size must be of type int"):
        build_config(str(wrong_type), True)


def test_text_values_are_read_in_the_fields_type() -> None:
    from resnet_mnist.config.settings import Schedule, coerce, from_params, parse_bool, same_value

    assert [parse_bool(v) for v in ("true", "False", "1", "no", "ON")] == [True, False, True, False, True]
    with pytest.raises(ValueError, match="'maybe' is not true or false"):
        parse_bool("maybe")
    assert coerce("lr", "2e-2") == 0.02 and coerce("epochs", "3") == 3
    assert coerce("schedule", "onecycle") is Schedule.onecycle
    with pytest.raises(ValueError, match="schedule='cosine' must be one of constant, onecycle"):
        coerce("schedule", "cosine")
    with pytest.raises(ValueError, match="epochs must be of type int"):
        coerce("epochs", 2.5)
    # what `mlflow run -P` logged, compared with the value used
    assert same_value("lr", "2e-2", 0.02) and not same_value("lr", "0.03", 0.02)
    assert same_value("use_residual", "true", True) and not same_value("use_residual", "no", True)
    assert same_value("preset", "mlproject/seed.yaml", "seed")
    # a logged run's params rebuild the same config
    config = build_config("full", True)
    assert from_params({k: str(v) for k, v in config.params().items()}) == config


def test_preset_values_must_have_the_fields_type(tmp_path: Path) -> None:
    for text, message in (
        ("schedule: cosine\n", "schedule='cosine' must be one of"),
        ("nesterov: 1\n", "nesterov must be true or false"),
        ("epochs: 2.5\n", "epochs must be of type int"),
        ("use_residual: true\n", "unknown keys use_residual"),
    ):
        preset = tmp_path / "p.yaml"
        preset.write_text(text)
        with pytest.raises(ConfigError, match=message):
            build_config(str(preset), True)


def test_presets_with_non_string_keys_or_wrong_shapes_are_refused(tmp_path: Path) -> None:
    for text, message in (
        ("1: 2\n", "unknown keys 1"),
        ("- lr\n", "must be a mapping"),
        ("variants: [plain]\n", "`variants` may only hold"),
    ):
        preset = tmp_path / "p.yaml"
        preset.write_text(text)
        with pytest.raises(ConfigError, match=message):
            build_config(str(preset), True)
