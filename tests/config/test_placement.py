"""Where a run trains is not one of its settings: a run trained under `--nproc` on CUDA is
rebuilt and compared from its params like any other (a review found it refused)."""

from __future__ import annotations

import pytest

from resnet_mnist.config.placement import Device, Placement, placement
from resnet_mnist.config.settings import build_config, differing_settings, from_params
from resnet_mnist.config.space import ConfigError


def logged_under_nproc_on_cuda(config) -> dict[str, str]:
    """The params such a run holds: its settings as text, the device MLflow runs logged before
    placement was apart (`cuda:0`), and what `--nproc` adds."""
    params = {k: str(v) for k, v in config.params().items()}
    return params | {
        "device": "cuda:0",
        "world_size": "2",
        "backend": "nccl",
        "global_batch_size": str(config.batch_size),
        "per_rank_batch_size": str(config.batch_size // 2),
    }


def test_a_cuda_nproc_run_is_rebuilt_from_its_params() -> None:
    config = build_config("seed", True, {"lr": 0.02})
    params = logged_under_nproc_on_cuda(config)
    assert from_params(params) == config
    assert differing_settings(params, config) == []
    assert differing_settings(params | {"lr": "0.03"}, config) == ["lr"]


def test_a_setting_a_run_predates_holds_its_default() -> None:
    config = build_config("seed", True)
    params = {k: str(v) for k, v in config.params().items() if k != "label_smoothing"}
    assert differing_settings(params, config) == []
    smoothed = build_config("seed", True, {"label_smoothing": 0.1})
    assert differing_settings(params, smoothed) == ["label_smoothing"]


def test_placement_is_typed_and_checked() -> None:
    assert placement({"device": "cpu", "data_root": None}) == Placement(Device.cpu, "")
    with pytest.raises(ConfigError, match="device='tpu' must be one of auto, cpu, cuda"):
        placement({"device": "tpu"})
    with pytest.raises(ConfigError, match="sync_bn needs CUDA"):
        Placement(Device.cpu).validate(build_config("seed", True, {"sync_bn": True}))
    Placement(Device.auto).validate(build_config("seed", True, {"sync_bn": True}))
