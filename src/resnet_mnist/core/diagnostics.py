"""Evidence for the residual study: where gradients vanish, how activations scale at
initialisation, and which blocks the trained network depends on.

Pure functions of a model (anything with `stages()`, see `model.py`) and tensors; they return
metrics by name, ready to log: `grad_norm/<stage>`, `init/act_std/<stage>`,
`init/grad_norm/<stage>`, `lesion/none` and `lesion/<stageK.blockI>`. No MLflow, no Trainer: the
lesion test takes the scoring function, so this module never imports `train`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resnet_mnist.core.model import blocks

GRAD_NORM = "grad_norm/"
INIT_ACT_STD = "init/act_std/"
INIT_GRAD_NORM = "init/grad_norm/"
LESION = "lesion/"


def _stages(model: nn.Module) -> dict[str, nn.Module]:
    """The model's stages by name (its `stages()` method)."""
    return model.stages()  # type: ignore[operator]


def _stage_grad_norms(model: nn.Module) -> torch.Tensor:
    """The L2 norm of each stage's parameter gradients, in `stages()` order, on the device (no
    host sync); a stage without gradients counts 0."""
    norms = []
    for stage in _stages(model).values():
        grads = [p.grad for p in stage.parameters() if p.grad is not None]
        if grads:
            per_tensor = torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
            norms.append(torch.linalg.vector_norm(per_tensor))
        else:
            norms.append(torch.zeros((), device=next(model.parameters()).device))
    return torch.stack(norms)


def grad_norms(model: nn.Module) -> dict[str, float]:
    """`grad_norm/<stage>` for the gradients now on the parameters (one host sync): a vanishing
    gradient shows as early stages orders of magnitude below the head."""
    values = _stage_grad_norms(model).tolist()
    return {f"{GRAD_NORM}{name}": v for name, v in zip(_stages(model), values, strict=True)}


def _output_module(stage: nn.Module) -> nn.Module:
    """The module whose output is the stage's: a `ModuleList` (the stem) is never called itself,
    so its last member (the stem's BatchNorm, before ReLU and pooling) stands for it."""
    return stage[-1] if isinstance(stage, nn.ModuleList) else stage


def init_statistics(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0
) -> dict[str, float]:
    """Per stage, the std of its output and the norm of its gradients after one forward and
    backward pass on (`x`, `y`) in train mode: `init/act_std/<stage>`, `init/grad_norm/<stage>`.

    Leaves no trace, so that training with diagnostics is the same as without: no weight changes,
    the gradients, BatchNorm running statistics, RNG state and train/eval mode are as before.
    """
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    saved_buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    was_training = model.training
    stds: dict[str, torch.Tensor] = {}

    def keep_std(name: str) -> Callable[[nn.Module, object, torch.Tensor], None]:
        # The std is taken at once: an in-place ReLU may overwrite the output right after.
        def hook(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            stds[name] = output.detach().float().std()

        return hook

    handles = [
        _output_module(stage).register_forward_hook(keep_std(name)) for name, stage in _stages(model).items()
    ]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            for p in params:
                p.grad = None
            model.train()
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=label_smoothing)
            loss.backward()
            values = torch.cat(
                [torch.stack([stds[name] for name in _stages(model)]), _stage_grad_norms(model)]
            ).tolist()
    finally:
        for handle in handles:
            handle.remove()
        for p, grad in zip(params, saved_grads, strict=True):
            p.grad = grad
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(saved_buffers[name])
        model.train(was_training)
    names = list(_stages(model))
    return {f"{INIT_ACT_STD}{n}": v for n, v in zip(names, values[: len(names)], strict=True)} | {
        f"{INIT_GRAD_NORM}{n}": v for n, v in zip(names, values[len(names) :], strict=True)
    }


def block_lesion(model: nn.Module, accuracy: Callable[[nn.Module], float]) -> dict[str, float]:
    """Veit et al. (2016)'s lesion test: `accuracy(model)` intact (`lesion/none`) and with each
    block bypassed in turn (`lesion/<block>`). A residual network degrades gracefully, a plain
    one collapses. Blocks that cannot be bypassed (a plain block that changes shape) are skipped;
    every `bypass` is False again afterwards, whatever happens."""
    metrics = {f"{LESION}none": accuracy(model)}
    for name, block in blocks(model):
        if not block.can_bypass:
            continue
        block.bypass = True
        try:
            metrics[f"{LESION}{name}"] = accuracy(model)
        finally:
            block.bypass = False
    return metrics
