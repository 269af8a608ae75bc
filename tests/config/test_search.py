"""Search spaces as people write them: the bundled ones load, bad ones are refused with a message
that names the file and the setting, and any YAML mapping either loads into a sound space or is
refused (never a traceback)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resnet_mnist.config.search import FIXED, load_space
from resnet_mnist.config.settings import FIELDS, TrainConfig, build_config
from resnet_mnist.config.space import ConfigError


def test_the_bundled_spaces_load_and_fit_their_presets() -> None:
    space = load_space("default")
    assert space.names() == ["lr", "momentum", "weight_decay", "warmup_steps"]
    lr = space.dimensions[0]
    assert (lr.low, lr.high, lr.log) == (0.003, 0.5, True) and lr.describe() == "lr in [0.003, 0.5] (log)"
    assert space.check_with(build_config("seed", True)) is space
    tiny = load_space("tiny").check_with(build_config("study-tiny", False, {"depth": 8}))
    assert tiny.names() == ["lr", "warmup_steps"]
    assert space.key() == load_space("default").key() != tiny.key()


@pytest.mark.parametrize(
    "text,message",
    [
        ("lr: [1, 2]", "lr must be a mapping"),
        ("rate: {low: 0.1, high: 1}", "rate is not a setting"),
        ("use_residual: {choices: [true, false]}", "use_residual is what a search compares"),
        ("lr: {low: 0.1, high: 1, step: 2}", "unknown keys step"),
        ("lr: {low: 0.1}", "needs both `low` and `high`"),
        ("lr: {low: 0.5, high: 0.1}", "needs finite low < high"),
        ("lr: {low: 0, high: 0.1, log: true}", "a log range needs low > 0"),
        ("lr: {low: 0.1, high: 1, log: 1}", "log must be true or false"),
        ("epochs: {low: 1.5, high: 3}", "epochs must be of type int"),
        ("augment: {low: 0, high: 1}", "is a bool setting: give `choices`"),
        ("schedule: {choices: []}", "choices must be a non-empty list"),
        ("schedule: {choices: [constant, constant]}", "choices repeat a value"),
        ("schedule: {choices: [cosine]}", "must be one of constant, onecycle"),
        ("schedule: {choices: [constant], low: 1}", "`choices` stands alone"),
        ("", "names no setting to search"),
        ("lr: {low: [", "is not valid YAML"),
    ],
)
def test_bad_spaces_are_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_space(str(path))


def test_a_space_must_make_valid_settings_with_its_preset(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("momentum: {low: 0.5, high: 1.0}\n")
    with pytest.raises(ConfigError, match=r"momentum=1.0 with the preset: momentum=1.0 must be in \[0, 1\)"):
        load_space(str(path)).check_with(build_config("seed", True))
    # onecycle cannot rise in one step: every value of a small int range is checked, not only its ends
    path.write_text("warmup_steps: {low: 0, high: 8}\n")
    onecycle = build_config("study-tiny", True, {"depth": 8})
    with pytest.raises(ConfigError, match="warmup_steps=1 with the preset"):
        load_space(str(path)).check_with(onecycle)
    assert load_space(str(path)).check_with(dataclasses.replace(onecycle, schedule="constant"))
    known = "default, study-cpu, study-gpu, tiny"
    with pytest.raises(ConfigError, match=f"unknown search space 'nope'; known search spaces: {known}"):
        load_space("nope")


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["constant", "onecycle", "mnist", "x", ""]),
)
SPECS = st.one_of(
    SCALARS,
    st.lists(SCALARS, max_size=3),
    st.dictionaries(st.sampled_from(["low", "high", "log", "choices", "step"]), SCALARS, max_size=4),
    st.fixed_dictionaries({"choices": st.lists(SCALARS, max_size=4)}),
)
NAMES = st.one_of(st.sampled_from(sorted(FIELDS)), st.text(max_size=8))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(NAMES, SPECS, max_size=4))
def test_any_mapping_loads_into_a_sound_space_or_is_refused(tmp_path: Path, raw: dict) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    try:
        space = load_space(str(path))
    except ConfigError:
        return
    assert space.names() == list(raw) and not set(space.names()) & set(FIXED)
    base = TrainConfig()
    for dim in space.dimensions:
        if dim.choices:
            assert len(set(dim.choices)) == len(dim.choices) >= 1
            continue
        low, high = dim.bounds()
        assert low < high and (low > 0 or not dim.log)
        assert isinstance(dim.low, type(getattr(base, dim.name)))
