"""What the benchmark measures `resnet-mnist train` against: the book's loop written the book's
way, and the peer a user would pick instead, PyTorch Lightning with its `MLFlowLogger`. Each runs
in the bench's process or as a script of its own (a whole process, as its user would run it).

Nothing here knows about this package's trainer or tracking: the references share only the data
(split, and for the peer preprocessed by `load_tensors`), the preset's settings and the ResNet18
module, so that the same experiment is timed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from resnet_mnist.config.settings import TrainConfig, build_config
from resnet_mnist.core import data as D
from resnet_mnist.core.model import ResNet18
from resnet_mnist.core.trainer import load_tensors

#: The interpreter of the Lightning peer's environment (`make bench` makes `.venv-bench`).
PEER_PYTHON_ENV = "RESNET_MNIST_PEER_PYTHON"
PEER_SETUP = (
    "`make bench` sets it up: .venv-bench, the project's packages plus the `bench` "
    "extra; or point $RESNET_MNIST_PEER_PYTHON at a Python that has them"
)

CHECKOUT = Path(__file__).resolve().parents[1]


#: `--quick`: the book's setting cut to a smoke test of the bench itself (every stage measured,
#: no figure meant): 512 / 100 / 100 images, one epoch, dev evaluated every 4 steps (the book's
#: 15 would be past the epoch's end, where Lightning keeps no best checkpoint). The same for
#: every contender.
QUICK = {"train_size": 512, "dev_size": 100, "test_size": 100, "epochs": 1, "eval_steps": 4}


def quick_args() -> list[str]:
    """`QUICK` as `resnet-mnist train` options."""
    return [f"--{key.replace('_', '-')}={value}" for key, value in QUICK.items()]


def book_config(residual: bool, quick: bool) -> TrainConfig:
    """The book's setting (seed preset) as the bench measures it (`QUICK` when `quick`)."""
    config = build_config("seed", residual)
    return dataclasses.replace(config, **QUICK) if quick else config


# -- the book-style loop ------------------------------------------------------------------------


class PilDataset(torch.utils.data.Dataset):
    """The book's dataset: every item goes through PIL and torchvision transforms when drawn."""

    def __init__(self, split: D.Split) -> None:
        from torchvision import transforms

        self.split = split
        self.transform = transforms.Compose(
            [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize(mean=[1.0], std=[1.0])]
        )

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        image = Image.fromarray(self.split.images[index], mode="L")
        return self.transform(image), int(self.split.labels[index])


def book_loop(
    config: TrainConfig, device: torch.device, workdir: Path, data_root: str = ""
) -> dict[str, float]:
    """The book's RunnerV3 loop: DataLoader over PIL items, `.item()` every step, dev evaluation
    every `eval_steps`, best model saved to disk, best model scored on test. Returns its seconds
    and accuracies, for a side-by-side ratio."""
    start = time.perf_counter()
    splits = D.book_split(D.load(data_root or None), config.train_size, config.dev_size, config.test_size)
    torch.manual_seed(config.seed)
    loaders = {
        name: torch.utils.data.DataLoader(
            PilDataset(split), batch_size=config.batch_size, shuffle=name == "train"
        )
        for name, split in splits.items()
    }
    model = ResNet18(use_residual=config.use_residual).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    total = len(loaders["train"]) * config.epochs
    best, step, path = 0.0, 0, workdir / "best.pdparams"

    def evaluate(loader: torch.utils.data.DataLoader) -> float:
        model.eval()
        correct = seen = 0
        with torch.no_grad():
            for x, y in loader:
                logits = model(x.to(device))
                F.cross_entropy(logits, y.to(device)).item()
                correct += (logits.argmax(1).cpu() == y).sum().item()
                seen += len(y)
        model.train()
        return correct / seen

    for _epoch in range(config.epochs):
        for x, y in loaders["train"]:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            loss.backward()
            opt.step()
            opt.zero_grad()
            loss.item()
            if step > 0 and (step % config.eval_steps == 0 or step == total - 1):
                score = evaluate(loaders["dev"])
                if score > best:
                    torch.save(model.state_dict(), path)
                    best = score
            step += 1
    model.load_state_dict(torch.load(path, weights_only=True))
    test = evaluate(loaders["test"])
    return {"seconds": time.perf_counter() - start, "best_dev_accuracy": best, "test_accuracy": test}


# -- the Lightning peer -------------------------------------------------------------------------


def peer_python() -> tuple[str, str] | None:
    """The interpreter that runs the Lightning peer and its Lightning version, if one with
    Lightning is there.

    Lightning lives in an environment of its own (`.venv-bench`, beside this one, sharing its
    packages through a `.pth` file), not in the project's: wherever Lightning is installed,
    `import mlflow.pytorch` imports it too, which would cost every `train` process about 0.7 s
    and 70 MiB.
    """
    python = os.environ.get(PEER_PYTHON_ENV) or str(
        Path(sys.prefix).parent / ".venv-bench" / "bin" / "python"
    )
    if not Path(python).is_file():
        return None
    probe = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('lightning'))"],
        capture_output=True,
        text=True,
    )
    return (python, probe.stdout.strip()) if probe.returncode == 0 else None


def lightning_peer(
    config: TrainConfig, device: torch.device, workdir: Path, data_root: str = ""
) -> dict[str, Any]:
    """The book's setting as a Lightning user writes it: a LightningModule, `MLFlowLogger` on a
    sqlite store with `log_model=True`, `ModelCheckpoint` on dev accuracy, dev evaluation every
    `eval_steps` steps, the best checkpoint scored on test. Data preprocessed once into tensors,
    as this package does, so that the loop's input pipeline is not what is compared. It records
    less than a `train` run: no FLOPs, no plots, no loadable MLflow model (a checkpoint file)."""
    start = time.perf_counter()
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    tensors = load_tensors(config, torch.device("cpu"), data_root)
    L.seed_everything(config.seed, verbose=False)
    loaders = {
        name: torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(*pair), batch_size=config.batch_size, shuffle=name == "train"
        )
        for name, pair in (("train", tensors.train), ("dev", tensors.dev), ("test", tensors.test))
    }

    class Book(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            # plain strings, as in `Trainer.checkpoint`: Lightning reads its checkpoint back
            # with torch.load(weights_only=True), which refuses the config's enums
            self.save_hyperparameters({k: str(v) for k, v in config.params().items()})
            self.model = ResNet18(use_residual=config.use_residual)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
            x, y = batch
            loss = F.cross_entropy(self.model(x), y)
            self.log("train_loss", loss)
            return loss

        def _score(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
            x, y = batch
            logits = self.model(x)
            self.log(f"{split}_loss", F.cross_entropy(logits, y), batch_size=len(y))
            self.log(f"{split}_accuracy", (logits.argmax(1) == y).float().mean(), batch_size=len(y))

        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            self._score(batch, "dev")

        def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
            self._score(batch, "test")

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=config.lr)

    best = ModelCheckpoint(dirpath=workdir / "lightning-checkpoints", monitor="dev_accuracy", mode="max")
    logger = MLFlowLogger(
        experiment_name="lightning-peer",
        tracking_uri=f"sqlite:///{workdir / 'lightning.db'}",
        log_model=True,
        save_dir=str(workdir / "lightning-mlruns"),
    )
    trainer = L.Trainer(
        max_epochs=config.epochs,
        val_check_interval=config.eval_steps,
        check_val_every_n_epoch=None,
        log_every_n_steps=1,
        logger=logger,
        callbacks=[best],
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
    )
    module = Book()
    trainer.fit(module, loaders["train"], loaders["dev"])
    scores = trainer.test(module, loaders["test"], ckpt_path="best", verbose=False)[0]
    return {
        "seconds": time.perf_counter() - start,
        "best_dev_accuracy": float(best.best_model_score),
        "test_accuracy": scores["test_accuracy"],
        "run_id": logger.run_id,
    }


def with_checkout(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with this checkout on PYTHONPATH: the benchmarks live beside the package, not in
    it, so a script of their own (run in a temporary folder) finds them only through it."""
    paths = [str(CHECKOUT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(env) | {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


# -- either as a script of its own --------------------------------------------------------------


def as_process(
    reference: str,
    residual: bool,
    workdir: Path,
    data_root: str,
    device: torch.device,
    quick: bool,
    python: str = sys.executable,
) -> dict[str, Any]:
    """Run `reference` (`book_loop` or `lightning_peer`) as a script of its own under `python`, as
    its user would (Python and its imports, the loop, exit): its result, wall time and peak
    memory."""
    data_root = str(Path(data_root or D.default_root()).resolve())
    script = (
        "import json, torch; from pathlib import Path; from benchmarks import reference as R; "
        f"config = R.book_config({residual}, {quick}); "
        f"result = R.{reference}(config, torch.device({device.type!r}), "
        f"Path({str(workdir)!r}), {data_root!r}); from resnet_mnist.runtime.timeline import peak_mib; "
        "print(json.dumps(result | {'peak_mib': peak_mib()}))"
    )
    start = time.perf_counter()
    with open(workdir / f"{reference}.log", "w+") as out:
        proc = subprocess.Popen(
            [python, "-c", script],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=with_checkout(os.environ),
        )
        proc.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{reference} failed ({proc.returncode}): {text[-800:]}")
    result = next(line for line in reversed(text.splitlines()) if line.startswith('{"seconds"'))
    return json.loads(result) | {"process_s": wall}
