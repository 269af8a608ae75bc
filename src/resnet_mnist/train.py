"""The Trainer: the book's runner done properly, emitting events that callbacks listen to.

No MLflow here. The loop keeps losses on the device and fetches them once every `log_steps`, so a
GPU never waits on the host inside the step loop; evaluation runs in `inference_mode`.
Step numbering follows the book: global steps from 0, dev evaluation at every `eval_steps`-th step
after 0 and at the last step; the best-dev checkpoint is scored on the test split at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from resnet_mnist import data as D
from resnet_mnist.config import TrainConfig
from resnet_mnist.model import ResNet18


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss; `step` says where."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at step {step}")
        self.step = step
        self.loss = loss


@dataclass
class Tensors:
    """The three preprocessed splits, already on the training device."""

    train: tuple[torch.Tensor, torch.Tensor]
    dev: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train[1]), "dev": len(self.dev[1]), "test": len(self.test[1])}


@dataclass
class Result:
    """What a finished training reports; `best_state` is the best-dev checkpoint (on CPU)."""

    best_dev_accuracy: float
    best_step: int
    test_accuracy: float
    test_loss: float
    steps: int
    train_time_s: float
    eval_time_s: float
    train_images_per_s: float
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)


class Callback:
    """Hooks the Trainer calls; every method is optional."""

    def on_start(self, trainer: Trainer, total_steps: int) -> None: ...
    def on_step(self, step: int, epoch: int, loss: float) -> None: ...
    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None: ...
    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None: ...
    def on_best(self, step: int, dev_accuracy: float) -> None: ...
    def on_epoch_end(self, epoch: int, mean_loss: float) -> None: ...
    def on_end(self, result: Result) -> None: ...


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without a GPU is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but no CUDA GPU is available; use --device cpu")
    return torch.device(name)


def build_model(config: TrainConfig, device: torch.device) -> ResNet18:
    """Seed, then build, so that the same seed gives the same initial weights."""
    torch.manual_seed(config.seed)
    return ResNet18(in_channels=1, num_classes=10, use_residual=config.use_residual).to(device)


def load_tensors(config: TrainConfig, device: torch.device) -> Tensors:
    """Read, split and preprocess MNIST once, straight onto `device`."""
    mnist = D.load(config.data_root or None)
    splits = D.book_split(mnist, config.train_size, config.dev_size, config.test_size)
    return Tensors(*(D.to_tensors(splits[name], config.normalize, device)
                     for name in ("train", "dev", "test")))


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=images.device)
    correct = torch.zeros((), device=images.device, dtype=torch.long)
    for x, y in D.batches(images, labels, batch_size):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(labels)
    return loss_sum.item() / n, correct.item() / n


class Trainer:
    """SGD with cross-entropy over preprocessed tensors; see the module docstring for the schedule."""

    def __init__(
        self, config: TrainConfig, model: nn.Module, callbacks: Sequence[Callback] = ()
    ) -> None:
        self.config = config
        self.model = model
        self.callbacks = list(callbacks)
        self.best_state: dict[str, torch.Tensor] = {}
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum,
            nesterov=config.nesterov, weight_decay=config.weight_decay,
        )

    def _emit(self, event: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)

    def _should_eval(self, step: int, total: int) -> bool:
        every = self.config.eval_steps
        return step == total - 1 or (every > 0 and step > 0 and step % every == 0)

    def fit(self, tensors: Tensors) -> Result:
        cfg = self.config
        x_train, y_train = tensors.train
        n_train = len(y_train)
        per_epoch = D.steps_per_epoch(n_train, cfg.batch_size)
        total = per_epoch * cfg.epochs
        scheduler = None
        if cfg.schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=cfg.lr, total_steps=total)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.model.train()
        self._emit("on_start", self, total)

        best_acc, best_step = -1.0, -1
        self.best_state: dict[str, torch.Tensor] = {}
        train_time = eval_time = 0.0
        images_seen = 0
        pending: list[torch.Tensor] = []
        pending_start = 0
        step = 0
        for epoch in range(cfg.epochs):
            epoch_loss = torch.zeros((), device=x_train.device)
            epoch_start_step = step
            tick = time.perf_counter()
            for x, y in D.batches(x_train, y_train, cfg.batch_size, generator):
                loss = F.cross_entropy(self.model(x), y, label_smoothing=cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                detached = loss.detach()
                epoch_loss += detached
                pending.append(detached)
                images_seen += len(y)
                evaluate_now = self._should_eval(step, total)
                if step % cfg.log_steps == 0 or evaluate_now or step == total - 1:
                    losses = torch.stack(pending).tolist()
                    train_time += time.perf_counter() - tick
                    self._flush(pending_start, epoch, losses, images_seen / max(train_time, 1e-9))
                    pending, pending_start = [], step + 1
                    if evaluate_now:
                        t0 = time.perf_counter()
                        dev_loss, dev_acc = evaluate(self.model, *tensors.dev, cfg.eval_batch_size)
                        eval_time += time.perf_counter() - t0
                        self._emit("on_eval", step, dev_loss, dev_acc)
                        if dev_acc > best_acc:
                            best_acc, best_step = dev_acc, step
                            self.best_state = {k: v.detach().to("cpu", copy=True)
                                               for k, v in self.model.state_dict().items()}
                            self._emit("on_best", step, dev_acc)
                    tick = time.perf_counter()
                step += 1
            train_time += time.perf_counter() - tick
            if pending:
                losses = torch.stack(pending).tolist()
                self._flush(pending_start, epoch, losses, images_seen / max(train_time, 1e-9))
                pending, pending_start = [], step
            self._emit("on_epoch_end", epoch, epoch_loss.item() / (step - epoch_start_step))

        t0 = time.perf_counter()
        self.model.load_state_dict(self.best_state)
        test_loss, test_acc = evaluate(self.model, *tensors.test, cfg.eval_batch_size)
        eval_time += time.perf_counter() - t0
        result = Result(
            best_dev_accuracy=best_acc, best_step=best_step, test_accuracy=test_acc,
            test_loss=test_loss, steps=total, train_time_s=train_time, eval_time_s=eval_time,
            train_images_per_s=images_seen / max(train_time, 1e-9), best_state=self.best_state,
        )
        self._emit("on_end", result)
        return result

    def _flush(self, first_step: int, epoch: int, losses: list[float], images_per_s: float) -> None:
        """Hand the buffered per-step losses to the callbacks; stop at the first non-finite one."""
        for offset, value in enumerate(losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(first_step + offset, value)
            self._emit("on_step", first_step + offset, epoch, value)
        last = first_step + len(losses) - 1
        self._emit("on_log", last, epoch, losses[-1], images_per_s)
