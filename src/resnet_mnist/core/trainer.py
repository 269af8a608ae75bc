"""The Trainer: the book's runner done properly, emitting events that callbacks listen to.

No MLflow here. The loop keeps losses on the device and fetches them once every `log_steps`, so a
GPU never waits on the host inside the step loop; evaluation runs in `inference_mode`.
Step numbering follows the book: global steps from 0, dev evaluation at every `eval_steps`-th step
after 0 and at the last step; the best-dev checkpoint is scored on the test split at the end.
With `config.diagnostics` the Trainer also reports `on_metrics` (see `diagnostics.py`): statistics
of the untrained network at step 0, per-stage gradient norms at every log step, and the
block-lesion test of the best checkpoint at the last step.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from resnet_mnist.config.settings import TrainConfig, differing_settings
from resnet_mnist.core import data as D
from resnet_mnist.core.augment import augment, generator_for
from resnet_mnist.core.device import Speed
from resnet_mnist.core.diagnostics import block_lesion, grad_norms, init_statistics
from resnet_mnist.core.distributed import Dist
from resnet_mnist.core.model import build_resnet
from resnet_mnist.runtime.errors import ProjectError


class NonFiniteLossError(ProjectError, RuntimeError):
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
    #: a few raw uint8 dev digits (N, 28, 28): the logged model's input example
    raw_examples: np.ndarray | None = None

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
    #: the block-lesion test of the best checkpoint (`lesion/...`) when `config.diagnostics`
    diagnostics: dict[str, float] = field(default_factory=dict)


CHECKPOINT_FORMAT = "resnet-mnist-resume-1"


class CheckpointError(ProjectError, ValueError):
    """A resume checkpoint that is not ours or was made with other settings."""


class EarlyStop(Exception):
    """A callback ended training on purpose before its last step (a search's pruner judged the
    trial unpromising at `step`): its run ends KILLED with `reason`, not FAILED."""

    def __init__(self, step: int, reason: str) -> None:
        super().__init__(reason)
        self.step = step
        self.reason = reason


class StopRequested(KeyboardInterrupt):
    """Training stopped at a clean step boundary on request (Ctrl-C or SIGTERM)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"stopped at step {step}")
        self.step = step


@dataclass
class TrainState:
    """Where training stands; with the model and optimiser it is a resumable checkpoint."""

    step: int = 0
    epoch: int = 0
    epoch_rng: torch.Tensor | None = None
    epoch_loss: float = 0.0
    best_accuracy: float = -1.0
    best_step: int = -1
    images_seen: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)

    def images_per_s(self) -> float:
        return self.images_seen / max(self.train_time, 1e-9)


class Callback:
    """Hooks the Trainer calls; every method is optional."""

    def on_start(self, trainer: Trainer, total_steps: int) -> None: ...
    def on_step(self, step: int, epoch: int, loss: float) -> None: ...
    def on_log(self, step: int, epoch: int, loss: float, images_per_s: float) -> None: ...
    def on_eval(self, step: int, dev_loss: float, dev_accuracy: float) -> None: ...
    def on_best(self, step: int, dev_accuracy: float) -> None: ...
    def on_epoch_end(self, epoch: int, mean_loss: float) -> None: ...
    def on_checkpoint(self, step: int, checkpoint: dict) -> None: ...
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_end(self, result: Result) -> None: ...


def build_model(config: TrainConfig, device: torch.device) -> nn.Module:
    """Seed, then build, so that the same seed gives the same initial weights."""
    torch.manual_seed(config.seed)
    return build_resnet(config.depth, config.use_residual, in_channels=1, num_classes=10).to(device)


def load_tensors(config: TrainConfig, device: torch.device, data_root: str = "") -> Tensors:
    """Read MNIST from `data_root` (default: `core.data.default_root`), split and preprocess it
    once, straight onto `device`."""
    mnist = D.load(data_root or None)
    splits = D.book_split(mnist, config.train_size, config.dev_size, config.test_size)
    train, dev, test = (
        D.to_tensors(splits[name], config.normalize, device) for name in ("train", "dev", "test")
    )
    return Tensors(train, dev, test, raw_examples=splits["dev"].images[:4].copy())


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    speed: Speed | None = None,
    dist: Dist | None = None,
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode; with `dist` each rank
    scores its shard and the sums are all-reduced."""
    was_training = model.training
    model.eval()
    speed = speed or Speed(False, False, False)
    n = len(labels)
    if dist is not None:
        images, labels = dist.shard(images), dist.shard(labels)
    sums = torch.zeros(2, device=images.device)
    for x, y in D.batches(speed.images(images), labels, batch_size):
        with speed.autocast(images.device):
            logits = model(x).float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.argmax(1) == y).sum()
    if dist is not None:
        dist.sum(sums)
    model.train(was_training)
    loss_sum, correct = sums.tolist()
    return loss_sum / n, correct / n


@dataclass(frozen=True)
class StepPlan:
    """What happens after a step: report the losses, evaluate on dev, save a resumable
    checkpoint, stop. Any of them first hands the pending losses to the callbacks."""

    log: bool
    evaluate: bool
    checkpoint: bool
    stop: bool

    @property
    def flush(self) -> bool:
        return self.log or self.evaluate or self.checkpoint or self.stop


def schedule(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The rate's schedule over `total` steps: onecycle (its rise `warmup_steps` long when set),
    or constant after a linear warm-up of `warmup_steps` (none at 0)."""
    warmup = cfg.warmup_steps
    if cfg.schedule == "onecycle":
        rise = min(warmup, total - 1) / total if warmup > 1 else 0.3  # 0.3: OneCycleLR's own
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=rise
        )
    if warmup > 0:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    return None


class Trainer:
    """SGD with cross-entropy over preprocessed tensors; see the module docstring for the schedule.

    `model` is what the step calls (wrapped in DistributedDataParallel and/or torch.compile when
    asked); `model_without_ddp` is the plain module whose weights are evaluated and saved, as in
    torchvision's reference scripts. `stop` (set by the CLI's signal handler) asks the loop to
    stop at the next step boundary.
    """

    def __init__(
        self,
        config: TrainConfig,
        model: nn.Module,
        callbacks: Sequence[Callback] = (),
        dist: Dist | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.config = config
        self.dist = dist
        self.stop = stop or threading.Event()
        self.device = next(model.parameters()).device
        if dist is not None and config.sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.callbacks = list(callbacks)
        self.state = TrainState()
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.speed = Speed.resolve(config, self.device)
        if self.speed.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model_without_ddp = model
        self.model: nn.Module = model
        if dist is not None:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids)
        if self.speed.compile:
            self.model = self._compiled()
        self.optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )

    def _compiled(self) -> nn.Module:
        """`self.model` wrapped in torch.compile (CUDA graphs via reduce-overhead there).

        Compilation is lazy, on the first call. Only `_first_step` (global step 0) falls back to
        eager when it fails; a run resumed from a checkpoint starts past step 0, so there a
        compiler failure is raised, not caught."""
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        return torch.compile(self.model, mode=mode)  # type: ignore[return-value]  # an nn.Module

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One SGD step on a batch already in the step's memory format; the loss stays on the
        device."""
        with self.speed.autocast(self.device):
            logits = self.model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _first_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Compilation happens on the first call; if it fails, warn once and stay eager."""
        if not self.speed.compile:
            return self.train_step(x, y)
        try:
            return self.train_step(x, y)
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: fall back
            warnings.warn(
                f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); training eagerly",
                stacklevel=2,
            )
            self.model = getattr(self.model, "_orig_mod", self.model)
            self.optimizer.zero_grad(set_to_none=True)
            return self.train_step(x, y)

    def _emit(self, event: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(*args)

    def at_step_boundary(self, step: int, total: int) -> StepPlan:
        """Decide what happens after global step `step` (0-based) of `total`.

        The book's schedule: dev evaluation at every `eval_steps`-th step after 0 and at the last
        step; losses reported every `log_steps` steps and at the end; a checkpoint every
        `checkpoint_every` steps; a stop as soon as one is requested (on every rank at once).
        """
        cfg, done = self.config, step + 1
        stop = self.stop.is_set()
        if self.dist is not None:
            stop = self.dist.any(stop, self.device)
        every = cfg.eval_steps
        return StepPlan(
            log=step % cfg.log_steps == 0 or done == total,
            evaluate=step == total - 1 or (every > 0 and step > 0 and step % every == 0),
            checkpoint=bool(cfg.checkpoint_every) and done % cfg.checkpoint_every == 0,
            stop=stop,
        )

    def fit(self, tensors: Tensors, resume: dict | None = None) -> Result:
        """Train to the end, then score the best-dev checkpoint on test.

        `resume` is a checkpoint from `checkpoint()` of the same config. A stop request is
        honoured between steps: the losses so far are reported, a checkpoint is emitted, and
        `StopRequested` is raised.
        """
        cfg = self.config
        # -- set-up: schedule, data order, state (fresh or restored) --
        per_epoch = D.steps_per_epoch(len(tensors.train[1]), cfg.batch_size)
        total = per_epoch * cfg.epochs
        self.scheduler = schedule(cfg, self.optimizer, total)
        generator = torch.Generator().manual_seed(cfg.seed)
        self.state = TrainState(epoch_rng=generator.get_state())
        if resume is not None:
            self.state = self._restore(resume)
            if self.state.epoch_rng is not None:
                generator.set_state(self.state.epoch_rng)
        self.model.train()
        self._emit("on_start", self, total)

        # -- train: epoch after epoch, each from where the state stands --
        train = self.speed.images(tensors.train[0]), tensors.train[1]
        if cfg.diagnostics and resume is None:
            self._emit(
                "on_metrics",
                0,
                init_statistics(
                    self.model_without_ddp,
                    train[0][: cfg.batch_size],
                    train[1][: cfg.batch_size],
                    cfg.label_smoothing,
                ),
            )
        while self.state.epoch < cfg.epochs:
            self.train_one_epoch(train, tensors, generator, per_epoch, total)

        # -- test: the best-dev checkpoint on the test split --
        return self._test(tensors, total)

    def train_one_epoch(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        tensors: Tensors,
        generator: torch.Generator,
        per_epoch: int,
        total: int,
    ) -> None:
        """The rest of the current epoch (all of it unless resuming mid-epoch); `tensors.dev` is
        what the boundary evaluates."""
        st, cfg = self.state, self.config
        epoch = st.epoch
        x_train, y_train = train
        st.epoch_rng = generator.get_state()
        skip = st.step - epoch * per_epoch
        pending: list[torch.Tensor] = []
        pending_start = st.step
        tick = time.perf_counter()
        for x, y in D.batches(x_train, y_train, cfg.batch_size, generator, skip):
            # -- one step --
            step = st.step
            st.images_seen += len(y)
            if self.dist is not None:
                x, y = self.dist.shard(x), self.dist.shard(y)
            if cfg.augment:
                rank = self.dist.rank if self.dist is not None else 0
                x = augment(x, generator_for(cfg.seed, step, rank, x.device))
            pending.append((self._first_step if step == 0 else self.train_step)(x, y))
            if self.scheduler is not None:
                self.scheduler.step()
            st.step += 1
            # -- the step boundary: report, evaluate, checkpoint, stop --
            todo = self.at_step_boundary(step, total)
            if not todo.flush:
                continue
            st.train_time += time.perf_counter() - tick
            if todo.log and cfg.diagnostics:  # the last step's gradients are still there
                self._emit("on_metrics", step, grad_norms(self.model_without_ddp))
            self._report(pending_start, epoch, pending)
            pending, pending_start = [], st.step
            if todo.evaluate:
                self._evaluate(step, tensors)
            if todo.checkpoint or todo.stop:
                self._emit("on_checkpoint", st.step, self.checkpoint())
            if todo.stop:
                raise StopRequested(st.step)
            tick = time.perf_counter()
        # -- the end of the epoch --
        st.train_time += time.perf_counter() - tick
        if pending:
            self._report(pending_start, epoch, pending)
        self._emit("on_epoch_end", epoch, st.epoch_loss / per_epoch)
        st.epoch, st.epoch_loss = epoch + 1, 0.0

    def _test(self, tensors: Tensors, total: int) -> Result:
        st = self.state
        t0 = time.perf_counter()
        self.model_without_ddp.load_state_dict(st.best_state)
        test_loss, test_acc = evaluate(
            self.model_without_ddp, *tensors.test, self.config.eval_batch_size, self.speed, self.dist
        )
        st.eval_time += time.perf_counter() - t0
        lesion = self._lesion(tensors, total - 1) if self.config.diagnostics else {}
        result = Result(
            best_dev_accuracy=st.best_accuracy,
            best_step=st.best_step,
            test_accuracy=test_acc,
            test_loss=test_loss,
            steps=total,
            train_time_s=st.train_time,
            eval_time_s=st.eval_time,
            train_images_per_s=st.images_per_s(),
            best_state=st.best_state,
            diagnostics=lesion,
        )
        self._emit("on_end", result)
        return result

    def _lesion(self, tensors: Tensors, step: int) -> dict[str, float]:
        """The lesion test of the weights now loaded (the best checkpoint) on the test split,
        reported at `step`."""

        def accuracy(model: nn.Module) -> float:
            return evaluate(model, *tensors.test, self.config.eval_batch_size, self.speed, self.dist)[1]

        metrics = block_lesion(self.model_without_ddp, accuracy)
        self._emit("on_metrics", step, metrics)
        return metrics

    def _mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """Per-rank values -> the mean over ranks (what the global batch saw)."""
        if self.dist is None:
            return tensor
        return self.dist.sum(tensor.clone()) / self.dist.world

    @property
    def best_state(self) -> dict[str, torch.Tensor]:
        return self.state.best_state

    def _evaluate(self, step: int, tensors: Tensors) -> None:
        st = self.state
        t0 = time.perf_counter()
        dev_loss, dev_acc = evaluate(
            self.model_without_ddp, *tensors.dev, self.config.eval_batch_size, self.speed, self.dist
        )
        st.eval_time += time.perf_counter() - t0
        # the best is kept before the callbacks hear of the evaluation: one may end training
        # here (a pruned trial), and what it learned up to now is still its best checkpoint
        improved = dev_acc > st.best_accuracy
        if improved:
            st.best_accuracy, st.best_step = dev_acc, step
            st.best_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model_without_ddp.state_dict().items()
            }
        self._emit("on_eval", step, dev_loss, dev_acc)
        if improved:
            self._emit("on_best", step, dev_acc)

    def checkpoint(self) -> dict:
        """Everything needed to continue exactly: weights, optimiser, schedule, data order,
        best-so-far. Plain tensors and numbers only, so it loads with `weights_only=True`."""
        st = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "params": {k: str(v) for k, v in self.config.params().items()},
            "model": {k: v.detach().to("cpu") for k, v in self.model_without_ddp.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "state": {f.name: getattr(st, f.name) for f in dataclasses.fields(st) if f.name != "best_state"},
            "best_state": st.best_state,
        }

    def _restore(self, ckpt: dict) -> TrainState:
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError("not a resnet-mnist resume checkpoint")
        differs = differing_settings(ckpt["params"], self.config)
        if differs:
            raise CheckpointError(f"checkpoint was made with other settings: {', '.join(differs)}")
        self.model_without_ddp.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        return TrainState(**ckpt["state"], best_state=ckpt["best_state"])

    def _report(self, first_step: int, epoch: int, pending: list[torch.Tensor]) -> None:
        """Hand the pending per-step losses (one host sync) to the callbacks; stop at the first
        non-finite one."""
        losses = self._mean(torch.stack(pending)).tolist()
        for offset, value in enumerate(losses):
            if not math.isfinite(value):
                raise NonFiniteLossError(first_step + offset, value)
            self.state.epoch_loss += value
            self._emit("on_step", first_step + offset, epoch, value)
        last = first_step + len(losses) - 1
        self._emit("on_log", last, epoch, losses[-1], self.state.images_per_s())
