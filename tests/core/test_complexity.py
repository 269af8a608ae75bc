"""Complexity: thop MACs and torch FLOPs for one 1x1x32x32 input, the layer table."""

from __future__ import annotations

import pytest

from resnet_mnist.core.complexity import format_table, measure
from resnet_mnist.core.model import ResNet18


def test_counts_for_residual_resnet18() -> None:
    c = measure(ResNet18(1, 10, use_residual=True))
    assert c.param_count == 11_175_370
    assert 35.0e6 < c.macs < 36.0e6  # DESIGN.md: thop counts about 35.6 M
    # flop_counter counts conv and matmul only, 2 FLOPs per multiply-add.
    assert 0.98 < c.flops / (2 * c.macs) < 1.0


def test_plain_variant_is_cheaper() -> None:
    assert measure(ResNet18(use_residual=False)).macs < measure(ResNet18()).macs


def test_layer_table_lists_leaves_with_shapes() -> None:
    c = measure(ResNet18())
    names = [row.name for row in c.layers]
    assert names[0] == "conv1" and names[-1] == "fc"
    assert c.layers[0].output_shape == (1, 64, 16, 16)
    assert next(r for r in c.layers if r.name == "maxpool").output_shape == (1, 64, 8, 8)
    assert sum(r.params for r in {r.name: r for r in c.layers}.values()) == c.param_count
    text = format_table(c)
    assert "11,175,370" in text and "thop" in text and "flop_counter" in text


def test_measured_once_per_architecture_then_read_back(tmp_path, monkeypatch) -> None:
    from resnet_mnist.core import complexity

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    model = ResNet18(use_residual=True)
    fresh = complexity.measured(model, "resnet18-residual")
    assert fresh == complexity.measure(model)
    (cached,) = (tmp_path / "resnet-mnist" / "complexity").iterdir()

    def no_second_count(*args: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(complexity, "measure", no_second_count)
    assert complexity.measured(model, "resnet18-residual") == fresh
    with pytest.raises(AssertionError, match="measured again"):  # another architecture
        complexity.measured(ResNet18(use_residual=False), "resnet18-plain")
    cached.write_text("{not json")  # a damaged cache file is measured again, not trusted
    with pytest.raises(AssertionError, match="measured again"):
        complexity.measured(model, "resnet18-residual")
