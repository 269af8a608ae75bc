"""Model size and cost: parameter count, MACs (thop), FLOPs (torch's flop counter), layer table."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import os
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int


@dataclass(frozen=True)
class Complexity:
    """`macs`: thop's multiply-accumulates (conv, linear, BN, pooling, ReLU); `flops`: torch's
    FlopCounterMode, 2 per multiply-add, conv and matmul only. For ResNet18 they agree to within
    the small cost of BN/ReLU/pooling: flops ~= 2 x macs."""

    param_count: int
    trainable_params: int
    macs: int
    flops: int
    layers: list[Layer]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_table(model: nn.Module, example: torch.Tensor) -> list[Layer]:
    """Output shape and own parameters of every leaf module, in execution order."""
    rows: list[Layer] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):

            def hook(mod: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
                params = sum(p.numel() for p in mod.parameters(recurse=False))
                rows.append(Layer(name, type(mod).__name__, tuple(out.shape), params))

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return rows


def measure(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 32, 32)) -> Complexity:
    """Count parameters, MACs and FLOPs of one forward pass on a zero input of `input_shape`."""
    from thop import profile
    from torch.utils.flop_counter import FlopCounterMode  # imports triton: only when measuring

    device = next(model.parameters()).device
    example = torch.zeros(input_shape, device=device)
    layers = layer_table(model, example)
    probe = copy.deepcopy(model).eval()
    with redirect_stdout(io.StringIO()), torch.no_grad():
        macs, _ = profile(probe, inputs=(example,), verbose=False)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        probe(example)
    return Complexity(
        param_count=count_params(model),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=int(macs),
        flops=int(counter.get_total_flops()),
        layers=layers,
    )


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "resnet-mnist" / "complexity"


def measured(
    model: nn.Module, architecture: str, input_shape: tuple[int, ...] = (1, 1, 32, 32)
) -> Complexity:
    """`measure`, once per architecture on this machine, then read back (a few ms instead of a
    second). The key holds everything the figures depend on: the architecture, the input shape,
    torch's version and the source of this module and of the model's."""
    import sys
    from importlib.metadata import version

    sources = b"".join(
        Path(file).read_bytes() for file in (__file__, sys.modules[type(model).__module__].__file__ or "")
    )
    key = hashlib.sha256(
        "|".join((architecture, str(input_shape), torch.__version__, version("ultralytics-thop"))).encode()
        + sources
    )
    path = cache_dir() / f"{architecture}-{key.hexdigest()[:16]}.json"
    try:
        data = json.loads(path.read_text())
        return Complexity(
            **data
            | {"layers": [Layer(**r | {"output_shape": tuple(r["output_shape"])}) for r in data["layers"]]}
        )
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        pass
    found = measure(model, input_shape)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(found)))
        os.replace(tmp, path)
    except OSError:  # a read-only home: measured again next time, nothing else changes
        pass
    return found


def format_table(c: Complexity) -> str:
    """A plain-text layer table with totals, for the CLI and the MLflow artifact."""
    lines = [f"{'layer':<24}{'type':<20}{'output shape':<22}{'params':>12}"]
    lines.append("-" * len(lines[0]))
    for row in c.layers:
        shape = "x".join(str(d) for d in row.output_shape)
        lines.append(f"{row.name:<24}{row.kind:<20}{shape:<22}{row.params:>12,}")
    lines.append("-" * len(lines[0]))
    lines.append(f"total parameters: {c.param_count:,} (trainable {c.trainable_params:,})")
    lines.append(f"MACs (thop: conv, linear, BN, pooling, activations): {c.macs:,}")
    lines.append(f"FLOPs (torch.utils.flop_counter: conv and matmul, 2 per MAC): {c.flops:,}")
    return "\n".join(lines)
