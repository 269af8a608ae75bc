"""Model: shapes, parameter counts, that the shortcut is really added, torchvision equivalence."""

from __future__ import annotations

import pytest
import torch
import torchvision

from resnet_mnist.core.complexity import count_params
from resnet_mnist.core.model import ResBlock, ResNet18, load_torchvision_weights


@pytest.mark.parametrize("use_residual", [True, False])
def test_output_shape(use_residual: bool) -> None:
    model = ResNet18(1, 10, use_residual=use_residual)
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)
    assert ResNet18(3, 1000, use_residual)(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_parameter_counts() -> None:
    assert count_params(ResNet18(1, 10, use_residual=True)) == 11_175_370
    # The plain network has no 1x1 projections: 3 x (conv + BN) fewer parameters.
    projections = (64 * 128 + 2 * 128) + (128 * 256 + 2 * 256) + (256 * 512 + 2 * 512)
    assert count_params(ResNet18(1, 10, use_residual=False)) == 11_175_370 - projections
    assert count_params(ResNet18(3, 1000)) == count_params(torchvision.models.resnet18())


def zero_convs(block: ResBlock) -> ResBlock:
    with torch.no_grad():
        block.conv1.weight.zero_()
        block.conv2.weight.zero_()
    return block.eval()


def test_residual_block_adds_its_input() -> None:
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        out_res = zero_convs(ResBlock(64, 64, use_residual=True))(x.clone())
        out_plain = zero_convs(ResBlock(64, 64, use_residual=False))(x.clone())
    assert torch.equal(out_res, torch.relu(x))
    assert torch.count_nonzero(out_plain) == 0


def test_projection_only_where_shape_changes_and_only_with_residual() -> None:
    assert ResBlock(64, 64, 1, True).shortcut is None
    assert isinstance(ResBlock(64, 128, 2, True).shortcut, torch.nn.Sequential)
    assert ResBlock(64, 128, 2, False).shortcut is None
    out = ResBlock(64, 128, 2, True)(torch.randn(1, 64, 8, 8))
    assert out.shape == (1, 128, 4, 4)


def test_stem_has_maxpool_and_all_four_stages() -> None:
    model = ResNet18()
    assert isinstance(model.maxpool, torch.nn.MaxPool2d)
    channels = [
        model.layer1[0].conv1.out_channels,
        model.layer2[0].conv1.out_channels,
        model.layer3[0].conv1.out_channels,
        model.layer4[0].conv1.out_channels,
    ]
    assert channels == [64, 128, 256, 512]


def test_equivalent_to_torchvision() -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    ours = ResNet18(3, 1000, use_residual=True)
    load_torchvision_weights(ours, reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        diff = (reference.eval()(x) - ours.eval()(x)).abs().max().item()
    assert diff <= 1e-5


def test_torchvision_weights_refused_by_plain_model() -> None:
    with pytest.raises(ValueError, match="residual variant"):
        load_torchvision_weights(
            ResNet18(3, 1000, use_residual=False), torchvision.models.resnet18().state_dict()
        )


def test_resnet34_is_torchvisions_and_depth_picks_the_family() -> None:
    from resnet_mnist.core.model import CifarResNet, ResNet, build_resnet, family

    assert count_params(build_resnet(34, True, 3, 1000)) == count_params(torchvision.models.resnet34())
    assert build_resnet(18).depth == 18 and count_params(build_resnet(18)) == 11_175_370
    assert isinstance(build_resnet(34), ResNet) and build_resnet(34).depth == 34
    assert isinstance(build_resnet(56), CifarResNet) and build_resnet(56).depth == 56
    assert [family(d) for d in (18, 34, 8, 20, 110)] == ["imagenet"] * 2 + ["cifar"] * 3
    for bad in (0, 19, 21, 51):
        with pytest.raises(ValueError, match=f"depth={bad} is not a ResNet depth"):
            family(bad)


@pytest.mark.parametrize("depth,params", [(20, 269_434), (56, 852_730), (110, 1_727_674)])
def test_cifar_family_matches_the_paper_and_shortcuts_cost_nothing(depth: int, params: int) -> None:
    """He et al. report 0.27 M, 0.85 M and 1.7 M parameters (3 input channels); option A
    shortcuts have none, so plain and residual networks are the same size."""
    from resnet_mnist.core.model import CifarResNet

    residual, plain = CifarResNet(depth, use_residual=True), CifarResNet(depth, use_residual=False)
    assert count_params(residual) == count_params(plain) == params
    assert residual(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    convs = [m for m in residual.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n + 1 convolutions and the classifier


def test_option_a_shortcut_subsamples_and_pads_with_zeros() -> None:
    from resnet_mnist.core.model import CifarBlock

    block = CifarBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    out = block.shortcut_path(x)
    assert out.shape == (2, 32, 4, 4)
    assert torch.equal(out[:, :16], x[:, :, ::2, ::2]) and not out[:, 16:].any()
